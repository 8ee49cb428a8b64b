#!/usr/bin/env python3
"""What the power sampler costs the timed runs: runner latency with a power meter sampled ÷ without (issue #19).

mobilenet-v1-0.25-128 on TFLite (the shared data's uint8 .tflite); the meter is a fake INA226 whose
``power1_input`` the sampler thread reads at ``--rate`` Hz (the same open/read/close of a small file a real hwmon
sensor costs, minus the driver's bus transfer, which happens in the kernel while the thread waits). Two measurements:

1. **In one process** (the default): the backend loaded once, then blocks of ``--repetitions`` timed runs, the
   runner's own loop (``perf_counter_ns`` around ``invoke()``), alternately with the sampler running and without
   (ON OFF, OFF ON, ...): the figure is the median over pairs of median(on) / median(off). No process start,
   placement or thread-pool difference between the two: what remains is the sampler's interference.
2. **As processes** (``--processes``): ``requestflow run`` with ``--power-meter hwmon:TREE`` and with
   ``--power-meter none``, a process each, alternating over the rounds; the same paired median ratio. This includes
   everything the runner does, and every process's own luck (CPU placement, frequency, other load).

Goal: <= 1.02 for both. Usage:

    python bench/bench_power.py [--processes] [--rounds N] [--repetitions N] [--rate HZ] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_machine import cpu_model, load_average, package_version

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.02  # median latency with the sampler / without, at most
MODEL, WEIGHTS = "mobilenet-v1-0.25-128", "mobilenet_v1_0.25_128_quant.tflite"


def shared_models() -> Path:
    sys.path.insert(0, str(ROOT))
    from requestflow.board.files import shared_data_dir

    data = shared_data_dir()
    if data is None or not (data / "models" / WEIGHTS).is_file():
        raise SystemExit(f"bench_power: needs the shared data's models/{WEIGHTS} ($REQUESTFLOW_DATA)")
    return data / "models"


def fake_ina226(root: Path) -> Path:
    chip = root / "sys/class/hwmon/hwmon0"
    chip.mkdir(parents=True)
    for name, value in (("name", "ina226"), ("power1_input", 4_200_000), ("curr1_input", 840), ("in1_input", 5000)):
        (chip / name).write_text(f"{value}\n")
    return root


def run_once(weights: Path, out: Path, args, meter: str | None) -> dict:
    command = [sys.executable, "-m", "requestflow.cli", "run", "--model", MODEL, "--backend", "tflite", "--weights",
               str(weights), "--repetitions", str(args.repetitions), "--warmup", str(args.warmup), "--quiet",
               "--out", str(out)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if meter:
        command += ["--power-meter", meter, "--power-rate-hz", str(args.rate), "--idle-s", "0.2"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    document = json.loads(out.read_text())
    return {"median_s": document["performance"]["median"], "energy": document.get("energy")}


def in_process(weights: Path, tree: Path, args) -> tuple[list[float], list[float], list[int]]:
    """Medians (s) of alternating blocks with the sampler on / off, and the readings of each 'on' block."""
    import os

    import numpy as np

    from requestflow.board import catalogue, resolve
    from requestflow.board.backends import create_backend
    from requestflow.board.power import Sampler
    from requestflow.board.power_meters import HwmonMeter

    model = catalogue.get_model(MODEL)
    backend = create_backend("tflite", model, resolve.from_paths([str(weights)], model), 1,
                             args.threads or len(os.sched_getaffinity(0)))
    backend.load()
    backend.set_input(np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8))
    invoke, clock = backend.invoke, time.perf_counter_ns
    for _ in range(args.warmup):
        invoke()
    meter = HwmonMeter(tree)
    on, off, readings = [], [], []
    for index in range(2 * args.rounds):
        sampling = (index % 4) in (0, 3)  # ON OFF OFF ON ...
        sampler = Sampler(meter, args.rate) if sampling else None
        if sampler:
            sampler.start()
        samples = [0] * args.repetitions
        for i in range(args.repetitions):
            start = clock()
            invoke()
            samples[i] = clock() - start
        if sampler:
            sampler.stop()
            if sampler.error:
                raise SystemExit(f"bench_power: the sampler failed: {sampler.error}")
            readings.append(len(sampler.readings))
        (on if sampling else off).append(statistics.median(samples) / 1e9)
    backend.close()
    return on, off, readings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="meter readings per second (default: 200)")
    parser.add_argument("--threads", type=int, help="the runner's --threads (default: its own)")
    parser.add_argument("--processes", action="store_true",
                        help="a requestflow run process per measurement instead of blocks in one process")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    weights = shared_models() / WEIGHTS
    started, load_before = time.time(), load_average()
    ratios, on, off, readings = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        tree = fake_ina226(Path(folder) / "tree")
        meter = f"hwmon:{tree}"
        if not args.processes:
            on, off, readings = in_process(weights, tree, args)
            ratios = [a / b for a, b in zip(on, off, strict=True)]
        for index in range(args.rounds if args.processes else 0):
            order = (meter, None) if index % 2 == 0 else (None, meter)
            pair = {}
            for kind in order:
                pair[kind] = run_once(weights, Path(folder) / "result.json", args, kind)
            energy = pair[meter]["energy"]
            if not energy or not energy["valid"]:
                raise SystemExit(f"bench_power: the sampler did not measure: {energy and energy['reason']}")
            on.append(pair[meter]["median_s"])
            off.append(pair[None]["median_s"])
            ratios.append(on[-1] / off[-1])
            readings.append(energy["samples"])
            print(f"round {index + 1}: on {on[-1] * 1e3:.4f} ms, off {off[-1] * 1e3:.4f} ms, ratio {ratios[-1]:.4f}, "
                  f"{energy['samples']} readings at {energy['rate_hz']} Hz", flush=True)
    ratio = statistics.median(ratios)
    report = {
        "benchmark": "bench_power", "mode": "processes" if args.processes else "in one process", "goal": GOAL,
        "ratio": ratio, "ok": ratio <= GOAL, "ratios": ratios,
        "median_on_s": statistics.median(on), "median_off_s": statistics.median(off), "readings": readings,
        "rate_hz": args.rate, "rounds": args.rounds, "repetitions": args.repetitions, "model": MODEL,
        "weights": WEIGHTS, "machine": {"cpu": cpu_model(), "litert": package_version("ai-edge-litert"),
                                        "load_before": load_before, "load_after": load_average()},
        "seconds": round(time.time() - started, 1),
    }
    print(f"runner latency with the power sampler at {args.rate:g} Hz / without, {report['mode']}: {ratio:.4f} (median "
          f"of {args.rounds} paired rounds, spread {min(ratios):.3f}-{max(ratios):.3f}; goal <= {GOAL}): "
          f"{'OK' if report['ok'] else 'MISSED'}; medians "
          f"{report['median_on_s'] * 1e3:.4f} / {report['median_off_s'] * 1e3:.4f} ms; load {load_before} -> "
          f"{report['machine']['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
