#!/usr/bin/env python3
"""How much the requestflow runner costs: its figures against bare reference loops, measured side by side.

1. Performance mode latency. For each point, ``requestflow run --mode performance`` (its ``performance.median``)
   against a bare loop written directly against LiteRT or TensorFlow/Keras that times only the inference call,
   and, for ``.tflite`` files, against LiteRT's own benchmark tool. Every measurement is a separate process (no
   process pays for another's imports or thread pools), and the kinds alternate over several rounds (ABC, CBA,
   ...) to even out drift. Ratio: the median over rounds of runner / reference, each pair measured next to each
   other in time (a paired estimate: slow drift of a shared machine cancels out in each pair).
   Goal: runner / bare <= 1.02, and runner / tool <= 1.02 (the issue's goal for both; the tool rounds its median
   to 0.01 ms, which at 0.3 ms is +-1.5%: the tool ratio of a sub-millisecond model is that coarse).
2. Accuracy mode throughput over the 500 shared ImageNet images: ``requestflow run --mode accuracy`` with a cold
   preprocessing cache (``REQUESTFLOW_CACHE`` kept between rounds as a board keeps it, its preprocessed images
   removed) and then warm (the same cache again), against a bare
   decode + preprocess + invoke + argmax loop. Goals: cold, runner / bare images/s >= 1.5 in-run and >= 1.2
   end-to-end (issue #20: decoding overlapped with inference on every core); warm >= 0.9. ``--baseline-requestflow
   CMD`` adds CMD's cold runs (e.g. an older commit's runner) to the same rounds; every runner's predictions must
   be identical, image by image.

The bare loops never import requestflow (each child checks ``sys.modules`` and says so). Usage:

    python bench/bench_runner.py [--quick] [--threads N] [--rounds N] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_machine import cpu_model, load_average, package_version

ROOT = Path(__file__).resolve().parents[1]
LATENCY_GOAL = 1.02  # runner median / bare median, at most
THROUGHPUT_GOAL = 0.9  # runner images/s / bare images/s, at least (warm preprocessing cache)
# issue #20: decoding overlapped with inference on every core, cold cache: in-run and end-to-end, at least
COLD_GOALS = {"loop_s": 1.5, "wall_s": 1.2}
NOISE_LIMIT = 0.10  # per-process figures that move more than this between rounds make a verdict unreliable
CROP_FRACTION = 0.875
IMAGE_PATTERN = re.compile(r"^ILSVRC2012_val_\d+\.JPEG$", re.IGNORECASE)
PROJECTED_IMAGES = 50_000
TOOL_MODULE = "ai_edge_litert.tools.benchmark_litert_model"
CHILD = "_child"  # first argument of the script when it runs one bare reference in a subprocess


@dataclass(frozen=True)
class Point:
    model_id: str
    backend: str
    weights: str  # file name in the shared data's models/
    repetitions: int
    warmup: int

    @property
    def name(self) -> str:
        return f"{self.model_id.removeprefix('mobilenet-v1-')} {self.backend}"


# Repetitions give about one second of timed inference per process on a 2-core x86 machine.
POINTS = (
    Point("mobilenet-v1-0.25-128", "tflite", "mobilenet_v1_0.25_128_quant.tflite", 2000, 50),
    Point("mobilenet-v1-0.75-192", "tflite", "mobilenet_v1_0.75_192_quant.tflite", 300, 10),
    Point("mobilenet-v1-0.25-224", "tf", "mobilenet_v1_0.25_224.h5", 400, 20),
)
ACCURACY_POINT = POINTS[0]


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


@dataclass
class Row:
    measure: str
    runner: str
    reference: str
    ratio: float | None
    goal: str  # "<= 1.02", ">= 0.9" or "" (information only)
    note: str = ""
    spread: float | None = None  # largest max/min - 1 of the per-process figures on either side

    @property
    def noisy(self) -> bool:
        return self.spread is not None and self.spread > NOISE_LIMIT

    @property
    def result(self) -> str:
        if not self.goal:
            return "info" if self.ratio is not None else "n/a"
        if self.ratio is None:
            return "ERROR"
        limit = float(self.goal.split()[1])
        ok = self.ratio <= limit if self.goal.startswith("<=") else self.ratio >= limit
        return "PASS" if ok else "MISS"


@dataclass
class Settings:
    data: Path
    requestflow: str
    threads: int
    rounds: int
    scale: float  # repetitions multiplier (--quick: fewer)
    workdir: Path
    env: dict = field(default_factory=dict)
    baseline: str | None = None  # another requestflow command (e.g. an older commit's): its cold runs beside


# ---------------------------------------------------------------------------------------------------------------
# Subprocesses


@dataclass
class Process:
    wall_s: float
    max_rss_mb: float


def run_process(command: list[str], env: dict, what: str) -> Process:
    """Run a command to completion: its wall time and peak memory. BenchError with its output's tail if it fails."""
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()
        try:
            child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BenchError(f"{what}: cannot start {command[0]}: {exc}") from None
        _, status, usage = os.wait4(child.pid, 0)  # reaps the child; its own rusage, not the sum of all children
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            output.seek(0)
            lines = output.read().strip().splitlines() or ["(no output)"]
            raise BenchError(f"{what} failed (exit {child.returncode}): {lines[-1]}\n"
                             f"command: {' '.join(command)}\n" + "\n".join(lines[-8:]))
    return Process(wall, usage.ru_maxrss / 1024)


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{what}: cannot read its result {path}: {exc}") from None


def run_requestflow(settings: Settings, point: Point, mode: str, extra: list[str], env: dict,
                    requestflow: str | None = None) -> tuple[dict, Process]:
    """One ``requestflow run`` (``requestflow``: another command than the settings'); its result document, and the
    process's wall time and peak memory."""
    out = Path(tempfile.mkstemp(suffix=".json", dir=settings.workdir)[1])
    command = [requestflow or settings.requestflow, "run", "--model", point.model_id, "--backend", point.backend,
               "--weights", str(settings.data / "models" / point.weights), "--mode", mode,
               "--threads", str(settings.threads), "--out", str(out), "--quiet", *extra]
    process = run_process(command, env, f"requestflow run {point.name} {mode}")
    document = read_json(out, "requestflow run")
    out.unlink()
    if document.get("status") != "ok":
        error = document.get("error", {})
        raise BenchError(f"requestflow run {point.name} {mode}: {error.get('type')}: {error.get('message')}")
    return document, process


def run_child(settings: Settings, kind: str, arguments: list[str]) -> tuple[dict, Process]:
    """This script in a fresh interpreter, running one bare reference; its result, wall time and peak memory."""
    out = Path(tempfile.mkstemp(suffix=".json", dir=settings.workdir)[1])
    command = [sys.executable, str(Path(__file__).resolve()), CHILD, kind, "--out", str(out), *arguments]
    process = run_process(command, settings.env, f"bare reference {kind}")
    result = read_json(out, f"bare reference {kind}")
    out.unlink()
    if result.get("requestflow_imported"):
        raise BenchError(f"bare reference {kind} imported requestflow: it is not a bare reference")
    return result, process


def run_litert_tool(settings: Settings, point: Point, repetitions: int, warmup: int) -> float:
    """LiteRT's own benchmark tool; its median in seconds (the tool rounds it to 0.01 ms)."""
    out = Path(tempfile.mkstemp(suffix=".json", dir=settings.workdir)[1])
    command = [sys.executable, "-m", TOOL_MODULE, "--model", str(settings.data / "models" / point.weights),
               "--num_threads", str(settings.threads), "--num_runs", str(repetitions),
               "--warmup_runs", str(warmup), "--result_json", str(out)]
    run_process(command, settings.env, "LiteRT benchmark tool")
    result = read_json(out, "LiteRT benchmark tool")
    out.unlink()
    try:
        return float(result["latency"]["median_ms"]) / 1e3
    except (KeyError, TypeError, ValueError):
        raise BenchError(f"LiteRT benchmark tool: no latency.median_ms in its result: {result}") from None


# ---------------------------------------------------------------------------------------------------------------
# 1. Performance mode latency


def bench_latency(settings: Settings, point: Point, tool_state: dict) -> list[Row]:
    repetitions = max(10, round(point.repetitions * settings.scale))
    warmup = max(2, round(point.warmup * settings.scale))
    model_path = settings.data / "models" / point.weights
    print(f"\n[{point.name}] {point.weights}: {repetitions} timed runs after {warmup} warm-up, "
          f"{settings.threads} threads, {settings.rounds} rounds", flush=True)

    def runner() -> float:
        extra = ["--repetitions", str(repetitions), "--warmup", str(warmup)]
        return run_requestflow(settings, point, "performance", extra, settings.env)[0]["performance"]["median"]

    def bare() -> float:
        kind = "bare-tflite" if point.backend == "tflite" else "bare-tf"
        arguments = ["--model", str(model_path), "--threads", str(settings.threads),
                     "--repetitions", str(repetitions), "--warmup", str(warmup)]
        return run_child(settings, kind, arguments)[0]["median_s"]

    def tool() -> float:
        return run_litert_tool(settings, point, repetitions, warmup)

    kinds = {"runner": runner, "bare": bare}
    if point.backend == "tflite" and tool_state.get("error") is None:
        kinds["tool"] = tool
    medians: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_index in range(settings.rounds):
        order = list(kinds) if round_index % 2 == 0 else list(reversed(kinds))
        figures = []
        for kind in order:
            try:
                medians[kind].append(kinds[kind]())
                figures.append(f"{kind} {medians[kind][-1] * 1e3:.3f} ms")
            except BenchError as exc:
                if kind != "tool":
                    raise
                tool_state["error"] = str(exc)  # not run again: reported once, plainly
                del kinds["tool"]
                medians["tool"] = []
                figures.append("tool FAILED")
        print(f"  round {round_index + 1}: " + ", ".join(figures), flush=True)

    name = f"{point.name} latency"
    runner_s = statistics.median(medians["runner"])
    bare_s = statistics.median(medians["bare"])
    reference = "bare LiteRT Interpreter" if point.backend == "tflite" else "bare Keras MobileNet, tf.function"
    note = paired_ratios(medians["runner"], medians["bare"])
    if point.backend == "tf":
        note += ("; not the same graph: the runner runs its own graph of the weights as constants (batch norm "
                 "folded), the reference Keras' layers over variables, so this compares implementations too")
    rows = [Row(f"{name} / {reference}", ms(runner_s), ms(bare_s), paired_median(medians["runner"], medians["bare"]),
                f"<= {LATENCY_GOAL}", note,
                spread(medians["runner"], medians["bare"]))]
    if point.backend != "tflite":
        rows.append(Row(f"{name} / LiteRT benchmark tool", ms(runner_s), "n/a", None, "",
                        "not a .tflite file: the tool runs .tflite models only"))
    elif medians.get("tool"):
        tool_s = statistics.median(medians["tool"])
        rows.append(Row(f"{name} / LiteRT benchmark tool", ms(runner_s), ms(tool_s),
                        paired_median(medians["runner"], medians["tool"]), f"<= {LATENCY_GOAL}",
                        f"the tool (CompiledModel API, random input) rounds its medians to 0.01 ms, i.e. "
                        f"+-{0.005e-3 / tool_s:.1%} here; " + paired_ratios(medians["runner"], medians["tool"]),
                        spread(medians["runner"], medians["tool"])))
    else:
        rows.append(Row(f"{name} / LiteRT benchmark tool", ms(runner_s), "not run", None, "",
                        f"could not be run: {first_line(tool_state.get('error', 'unknown'))}"))
    return rows


def spread(*series: list[float]) -> float:
    """The largest max/min - 1 among the series: how much the same measurement moved between processes."""
    return max(max(values) / min(values) - 1 for values in series if values)


def paired_median(runner: list[float], reference: list[float]) -> float:
    """The median of the round-by-round ratios: the headline figure of every comparison."""
    return statistics.median(a / b for a, b in zip(runner, reference, strict=True))


def paired_ratios(runner: list[float], reference: list[float]) -> str:
    """Round by round ratios (the two processes of a round ran next to each other in time)."""
    if len(runner) != len(reference):
        return ""
    ratios = [a / b for a, b in zip(runner, reference, strict=True)]
    return f"per-round ratios {' '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})"


# ---------------------------------------------------------------------------------------------------------------
# 2. Accuracy mode throughput


def bench_throughput(settings: Settings) -> tuple[list[Row], list[str]]:
    point = ACCURACY_POINT
    images = settings.data / "imagenet" / "val"
    val_txt = settings.data / "imagenet" / "val.txt"
    files = [images / name for name in os.listdir(images) if IMAGE_PATTERN.match(name)]
    for path in files:  # read once, so that every run finds them in the OS page cache
        path.read_bytes()
    print(f"\n[accuracy {point.name}] {images} ({len(files)} images, in the OS page cache for every run), "
          f"{settings.threads} threads, {settings.rounds} rounds", flush=True)
    extra = ["--images", str(images), "--val-txt", str(val_txt)]
    figures: dict[str, list[dict]] = {"cold": [], "warm": [], "bare": [], **({"baseline": []} if settings.baseline
                                                                             else {})}
    predictions: dict[str, list] = {}
    cache_bytes = 0
    # the board's cache, kept between rounds as a board keeps it between points (the OpenCL probe's answer, issue
    # #20); cold: its preprocessed images removed before the run
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=settings.workdir))
    baseline_cache = Path(tempfile.mkdtemp(prefix="cache-baseline-", dir=settings.workdir))
    for round_index in range(settings.rounds):
        env = {**settings.env, "REQUESTFLOW_CACHE": str(cache)}

        def runner(kind: str, env: dict = env) -> None:
            document, process = run_requestflow(settings, point, "accuracy", extra, env,
                                                settings.baseline if kind == "baseline" else None)
            accuracy, timings = document["accuracy"], document["timings"]
            figures[kind].append({"n": accuracy["n"], "top1": accuracy["top1"],
                                  "loop_s": timings["images_load_s"] + timings["run_s"],
                                  "wall_s": process.wall_s, "rss_mb": process.max_rss_mb})
            if predictions.setdefault(kind, document["predictions"]) != document["predictions"]:
                raise BenchError(f"{kind}: the predictions differ between rounds")

        def baseline() -> None:  # its own cache, cold
            shutil.rmtree(baseline_cache / "preprocessed", ignore_errors=True)
            runner("baseline", {**settings.env, "REQUESTFLOW_CACHE": str(baseline_cache)})

        def cold() -> None:
            nonlocal cache_bytes
            shutil.rmtree(cache / "preprocessed", ignore_errors=True)
            runner("cold")
            cache_bytes = sum(path.stat().st_size for path in (cache / "preprocessed").rglob("*") if path.is_file())

        def bare() -> None:
            arguments = ["--model", str(settings.data / "models" / point.weights), "--images", str(images),
                         "--val-txt", str(val_txt), "--threads", str(settings.threads)]
            result, process = run_child(settings, "bare-accuracy", arguments)
            figures["bare"].append({**result, "wall_s": process.wall_s, "rss_mb": process.max_rss_mb})

        steps = [cold, lambda: runner("warm"), bare, *([baseline] if settings.baseline else [])]  # warm: cold's cache
        for step in steps if round_index % 2 == 0 else steps[::-1][:-2] + steps[:2]:
            step()
        print(f"  round {round_index + 1}: " + ", ".join(
            f"{kind} {rate(figures[kind][-1], 'loop_s'):.0f} img/s ({rate(figures[kind][-1], 'wall_s'):.0f} "
            f"end-to-end)" for kind in figures), flush=True)

    if len({json.dumps(p) for p in predictions.values()}) > 1:
        raise BenchError(f"the runs' predictions differ between kinds ({', '.join(predictions)})")
    top1 = {kind: sorted({round(f["top1"], 6) for f in runs}) for kind, runs in figures.items()}
    counts = {f["n"] for runs in figures.values() for f in runs}
    if len(counts) != 1:
        raise BenchError(f"runner and bare loop classified different numbers of images: {sorted(counts)}")
    n = counts.pop()
    speeds = {kind: {clock: [rate(f, clock) for f in runs] for clock in ("loop_s", "wall_s")}
              for kind, runs in figures.items()}
    speed = {kind: {clock: statistics.median(values) for clock, values in clocks.items()}
             for kind, clocks in speeds.items()}
    labels = {"cold": "cold preprocessing cache", "warm": "warm preprocessing cache",
              **({"baseline": "cold preprocessing cache, baseline"} if settings.baseline else {})}
    rows = []
    for kind, label in labels.items():
        for clock, suffix in (("loop_s", ""), ("wall_s", ", end-to-end")):
            goal = COLD_GOALS[clock] if kind == "cold" else THROUGHPUT_GOAL if kind == "warm" else None
            rows.append(Row(f"{point.name} accuracy {label}{suffix}", ips(speed[kind][clock]),
                            ips(speed["bare"][clock]), paired_median(speeds[kind][clock], speeds["bare"][clock]),
                            f">= {goal}" if goal else "", paired_ratios(speeds[kind][clock], speeds["bare"][clock]),
                            spread(speeds[kind][clock], speeds["bare"][clock])))
    if settings.baseline:  # this runner against the baseline's, cold, paired by round
        for clock, suffix in (("loop_s", ""), ("wall_s", ", end-to-end")):
            rows.append(Row(f"{point.name} accuracy cold, this runner / baseline{suffix}", ips(speed["cold"][clock]),
                            ips(speed["baseline"][clock]),
                            paired_median(speeds["cold"][clock], speeds["baseline"][clock]), "",
                            paired_ratios(speeds["cold"][clock], speeds["baseline"][clock]),
                            spread(speeds["cold"][clock], speeds["baseline"][clock])))
    lines = [f"accuracy: in-run = n / (images_load_s + run_s) from the runner's JSON, against the bare loop's own "
             f"timer; end-to-end = n / process wall time. top-1 on {n} images: "
             + ", ".join(f"{kind} {'/'.join(f'{t:.3f}' for t in values)}" for kind, values in top1.items())]
    lines.append(f"projected time for {PROJECTED_IMAGES:,} images like these (227x227 JPEGs; full-size ImageNet "
                 "JPEGs decode slower):")
    for kind, label in (*labels.items(), ("bare", "bare loop")):
        rss = statistics.median(f["rss_mb"] for f in figures[kind])
        lines.append(f"  {label:35} {duration(PROJECTED_IMAGES / speed[kind]['loop_s'])} in-run, "
                     f"{duration(PROJECTED_IMAGES / speed[kind]['wall_s'])} end-to-end; "
                     f"peak memory {rss:.0f} MB for {n} images")
    lines.append(f"  the runner's preprocessing cache: {cache_bytes / 1e6:.1f} MB for {n} images at "
                 f"{point.model_id.rsplit('-', 1)[1]} px, so {cache_bytes / n * PROJECTED_IMAGES / 1e9:.2f} GB "
                 f"for {PROJECTED_IMAGES:,}")
    return rows, lines


def rate(figure: dict, clock: str) -> float:
    return figure["n"] / figure[clock]


def count_images(folder: Path) -> int:
    return sum(1 for name in os.listdir(folder) if IMAGE_PATTERN.match(name))


# ---------------------------------------------------------------------------------------------------------------
# The bare references, each run in its own process. They import numpy, Pillow and LiteRT or TensorFlow only.


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"bench_runner.py {CHILD}")
    parser.add_argument("kind", choices=("bare-tflite", "bare-tf", "bare-accuracy"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repetitions", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--images")
    parser.add_argument("--val-txt")
    args = parser.parse_args(argv)
    if args.kind == "bare-tflite":
        result = bare_tflite_latency(args.model, args.threads, args.warmup, args.repetitions)
    elif args.kind == "bare-tf":
        result = bare_tf_latency(args.model, args.threads, args.warmup, args.repetitions)
    else:
        result = bare_accuracy(args.model, Path(args.images), Path(args.val_txt), args.threads)
    result["requestflow_imported"] = any(name.split(".")[0] == "requestflow" for name in sys.modules)
    Path(args.out).write_text(json.dumps(result))
    return 0


def timed_loop(call, warmup: int, repetitions: int) -> dict:
    """``call()`` warmup times untimed, then repetitions times, each timed alone."""
    for _ in range(warmup):
        call()
    samples = [0] * repetitions
    clock = time.perf_counter_ns
    for i in range(repetitions):
        start = clock()
        call()
        samples[i] = clock() - start
    return {"median_s": statistics.median(samples) / 1e9, "n": repetitions}


def noise(shape, dtype):
    """Deterministic input; uint8 0..255, or float32 scaled to [-1, 1)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    return pixels if dtype == np.uint8 else (pixels.astype(np.float32) / 127.5 - 1).astype(dtype)


def bare_tflite_latency(model: str, threads: int, warmup: int, repetitions: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], noise(detail["shape"], detail["dtype"]))
    return timed_loop(interpreter.invoke, warmup, repetitions)


def bare_tf_latency(weights: str, threads: int, warmup: int, repetitions: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    # the runner's thread configuration: intra-op pool of `threads`, inter-op 1
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.applications.MobileNet(alpha=0.25, input_shape=(224, 224, 3), weights=None)
    model.load_weights(weights)
    spec = tf.TensorSpec([1, 224, 224, 3], tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function()
    x = tf.constant(noise((1, 224, 224, 3), np.float32))
    return timed_loop(lambda: forward(x), warmup, repetitions)


def bare_accuracy(model: str, images: Path, val_txt: Path, threads: int) -> dict:
    """Decode, preprocess, invoke and argmax every image in turn; the loop's time and top-1."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    files = sorted(name for name in os.listdir(images) if IMAGE_PATTERN.match(name))
    truth = dict(line.split() for line in val_txt.read_text().splitlines() if line.strip())
    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    resolution = int(input_detail["shape"][1])
    background = int(output_detail["shape"][-1]) == 1001  # model class k+1 = ImageNet class k
    predicted = []
    start = time.perf_counter()
    for name in files:
        with Image.open(images / name) as image:
            image = image.convert("RGB")
            width, height = image.size
            left = int((width - width * CROP_FRACTION) / 2)
            top = int((height - height * CROP_FRACTION) / 2)
            image = image.crop((left, top, width - left, height - top)).resize((resolution, resolution),
                                                                                Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
        interpreter.set_tensor(input_detail["index"], pixels[np.newaxis])
        interpreter.invoke()
        predicted.append(int(np.argmax(interpreter.get_tensor(output_detail["index"])[0])) - background)
    loop_s = time.perf_counter() - start
    correct = sum(prediction == int(truth[name]) for prediction, name in zip(predicted, files, strict=True))
    return {"n": len(files), "top1": correct / len(files), "loop_s": loop_s}


# ---------------------------------------------------------------------------------------------------------------
# Report


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def ips(images_per_second: float) -> str:
    return f"{images_per_second:.0f} img/s"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def machine_lines(threads: int, load_at_start: str) -> list[str]:
    cpu = cpu_model()
    tensorflow = package_version("tensorflow-cpu", "tensorflow")
    return [f"machine: {cpu}; {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} in this process's affinity), "
            f"{threads} threads used; {platform.system()} {platform.release()} {platform.machine()}",
            f"software: python {platform.python_version()}, tensorflow {tensorflow}, keras {package_version('keras')}, "
            f"ai-edge-litert {package_version('ai-edge-litert')}, "
            f"pillow {package_version('pillow')}, requestflow {package_version('requestflow')}",
            f"load average (1, 5, 15 min): {load_at_start} at the start, {load_average()} at the end"]


def print_table(rows: list[Row]) -> None:
    header = ("measure", "runner", "reference", "ratio", "goal", "result", "spread")
    cells = [header] + [(row.measure, row.runner, row.reference, "-" if row.ratio is None else f"{row.ratio:.3f}",
                         row.goal or "-", row.result + ("*" if row.noisy else ""),
                         "-" if row.spread is None else f"{row.spread:.0%}") for row in rows]
    widths = [max(len(cell[i]) for cell in cells) for i in range(len(header))]
    for index, cell in enumerate(cells):
        print("  ".join(text.ljust(width) if i in (0, 5) else text.rjust(width)
                        for i, (text, width) in enumerate(zip(cell, widths, strict=True))).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print(f"spread: the largest max/min - 1 of the per-process figures on either side of a ratio. * = spread above "
          f"{NOISE_LIMIT:.0%}: the machine was too busy for a verdict at a 2% goal; run again on an idle machine.")
    for row in rows:
        if row.note:
            print(f"  {row.measure}: {row.note}")


# ---------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the repetitions and 3 rounds (about 1 min)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of every runner and reference (default: the CPUs in the affinity set)")
    parser.add_argument("--rounds", type=int, help="processes of each kind per measurement (default: 7, quick: 3)")
    parser.add_argument("--data", type=Path, help="the shared data folder (default: $REQUESTFLOW_DATA, else "
                                                  "../shared/data beside the project)")
    parser.add_argument("--requestflow", help="the requestflow command (default: the one beside this Python)")
    parser.add_argument("--baseline-requestflow", metavar="COMMAND",
                        help="accuracy: also time this requestflow command's cold runs in the same rounds (e.g. a "
                             "script running an older commit's sources), paired with this runner's")
    parser.add_argument("--skip", choices=("latency", "throughput"), action="append", default=[],
                        help="leave out one part (repeatable)")
    parser.add_argument("--backend", choices=sorted({point.backend for point in POINTS}), action="append",
                        help="latency: only this backend's points (repeatable; default: every point)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def find_requestflow(given: str | None) -> str:
    candidates = [given] if given else [str(Path(sys.executable).parent / "requestflow"), shutil.which("requestflow")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError(f"the requestflow command was not found ({given or 'beside ' + sys.executable + ' or on PATH'})"
                     "; install the project (pip install -e .) or pass --requestflow PATH")


def check_data(data: Path) -> None:
    needed = [data / "models" / point.weights for point in POINTS]
    needed += [data / "imagenet" / "val.txt", data / "imagenet" / "synset_words.txt"]
    missing = [str(path) for path in needed if not path.is_file()]
    if not (data / "imagenet" / "val").is_dir():
        missing.append(str(data / "imagenet" / "val") + "/")
    if missing:
        raise BenchError("missing from the shared data folder (pass --data DIR or set $REQUESTFLOW_DATA):\n  "
                         + "\n  ".join(missing))
    if count_images(data / "imagenet" / "val") == 0:
        raise BenchError(f"no ILSVRC2012_val_*.JPEG images in {data / 'imagenet' / 'val'}")


def main(argv: list[str]) -> int:
    if argv[:1] == [CHILD]:
        return child_main(argv[1:])
    args = parse_args(argv)
    started, load_at_start = time.perf_counter(), load_average()
    data = args.data or Path(os.environ.get("REQUESTFLOW_DATA") or ROOT.parent / "shared" / "data")
    try:
        check_data(data)
        requestflow = find_requestflow(args.requestflow)
    except BenchError as exc:
        print(f"bench_runner: error: {exc}", file=sys.stderr)
        return 2
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    rows: list[Row] = []
    extra_lines: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="rfbench-") as workdir:
        settings = Settings(data=data.resolve(), requestflow=requestflow, threads=args.threads,
                            rounds=args.rounds or (3 if args.quick else 7), scale=0.25 if args.quick else 1.0,
                            workdir=Path(workdir), env=env, baseline=args.baseline_requestflow)
        print(f"requestflow: {requestflow}\nreferences: {sys.executable}\ndata: {settings.data}")
        tool_state: dict = {}
        if "latency" not in args.skip:
            for point in (p for p in POINTS if not args.backend or p.backend in args.backend):
                try:
                    rows.extend(bench_latency(settings, point, tool_state))
                except BenchError as exc:
                    failed = True
                    print(f"  ERROR: {exc}", flush=True)
                    rows.append(Row(f"{point.name} latency", "-", "-", None, f"<= {LATENCY_GOAL}",
                                    first_line(str(exc))))
        if "throughput" not in args.skip:
            try:
                throughput_rows, extra_lines = bench_throughput(settings)
                rows.extend(throughput_rows)
            except BenchError as exc:
                failed = True
                print(f"  ERROR: {exc}", flush=True)
                rows.append(Row("accuracy throughput", "-", "-", None, f">= {THROUGHPUT_GOAL}", first_line(str(exc))))

    print("\n" + "=" * 40 + " summary " + "=" * 40)
    print_table(rows)
    for line in extra_lines:
        print(line)
    for line in machine_lines(args.threads, load_at_start):
        print(line)
    print(f"ratios: median over {settings.rounds} rounds of the paired per-round ratio (kinds alternating); the "
          f"figures beside them are medians over the rounds; total bench time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "runner", "rounds": settings.rounds, "threads": args.threads, "quick": args.quick,
            "rows": [{"measure": r.measure, "runner": r.runner, "reference": r.reference, "ratio": r.ratio,
                      "goal": r.goal, "result": r.result, "spread": r.spread, "noisy": r.noisy, "note": r.note}
                     for r in rows],
            "lines": extra_lines, "machine": machine_lines(args.threads, load_at_start),
            "seconds": time.perf_counter() - started}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
