"""The runner: one benchmark point (model x backend x weights x mode x settings) -> one result document.

Performance mode: ``warmup`` runs that are not counted, then ``repetitions`` timed runs of one batch each; the
timed region is the backend's ``invoke()`` alone, every raw sample is kept, and ``performance.quality`` gives the
measurement's verdict (VALID or FLAGGED with reasons: ``requestflow.board.quality``). A run is count-bound
(``repetitions``) and, with ``min_duration_s``, duration-bound too: it goes on until both hold, like LoadGen's
``min_query_count`` / ``min_duration`` (the *quick* and *valid* profiles: ``latency_stats.PROFILES``).
``performance.latency`` has p50/p90/p99 with confidence intervals and LoadGen's early-stopping estimates
(``requestflow.board.latency_stats``). With a power meter (``power_meter``: ``requestflow.board.power``), an idle
baseline precedes the warm-up and ``energy`` gives the measured watts and joules per inference. ``cold_start``:
process start to backend ready, and the first inference's latency. Accuracy mode: every selected image once, top-1 /
top-5 against ``val.txt``, with each image's top-5.

The result document (``result.schema.json``, ``SCHEMA_VERSION``) is what the results store loads. Bad input raises
``UserError`` before anything runs; a failure while running gives a document with ``status: failed`` and ``error``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import requestflow
from requestflow.board import catalogue
from requestflow.board.files import progress, shared_data_dir
from requestflow.errors import UserError

SCHEMA_VERSION = 2  # 2: performance.latency, performance.profile, energy, cold_start
SCHEMA_PATH = Path(__file__).with_name("result.schema.json")
PROGRESS_ENV = "REQUESTFLOW_PROGRESS"  # the file progress lines go to, --quiet or not (``Heartbeat``)
PROGRESS_EVERY_S = 1.0


@dataclass
class RunConfig:
    model: str
    backend: str
    mode: str = "performance"
    weights: list[str] | None = None
    precision: str | None = None
    release: str | None = None
    images: str | None = None
    val_txt: str | None = None
    synset_words: str | None = None
    limit: int | None = None
    repetitions: int = 20
    warmup: int = 3
    batch_size: int = 1
    threads: int | None = None
    cpus: list[int] | None = None
    variant: dict | str | None = None  # the backend's variant (armcl: target, layout, conv_method...; tf: compiler)
    armcl_build: str | None = None  # the ArmCL build folder (armcl; default: armcl_program.find_build())
    allow_download: bool = True
    progress: bool = True
    command: list[str] = field(default_factory=list)
    min_duration_s: float = 0.0  # timed runs go on until the timed region lasted this long (and repetitions ran)
    profile: str | None = None  # quick or valid (latency_stats.PROFILES): recorded, with the settings it got
    power_meter: str | None = None  # hwmon[:ROOT], rapl[:ROOT], command:CMD, auto, none (requestflow.board.power)
    power_rate_hz: float = 200.0
    idle_s: float = 1.0  # the idle baseline before the warm-up, with a power meter

    def validate(self) -> None:
        catalogue.get_model(self.model)
        _choice("backend", self.backend, catalogue.BACKENDS)
        _choice("mode", self.mode, catalogue.MODES)
        from requestflow.board.backends import parse_variant
        self.variant = parse_variant(self.backend, self.variant)  # armcl's and tf's; refused for the others
        if self.armcl_build and self.backend != "armcl":
            raise UserError(f"--armcl-build is for the armcl backend, not {self.backend}")
        if self.precision is not None:
            _choice("precision", self.precision, catalogue.PRECISIONS)
            if self.backend in catalogue.FLOAT_BACKENDS and self.precision != "fp32":
                raise UserError(f"the {self.backend} backend runs fp32; to run dequantized {self.precision} weights, "
                                "give their .tflite with --weights (or --release 2018_08_02_quant) without "
                                "--precision")
        for name, minimum in (("repetitions", 1), ("warmup", 0), ("batch_size", 1), ("limit", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < minimum):
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value}")
        _check_measurement_settings(self)
        if self.cpus is not None:
            allowed = os.sched_getaffinity(0)
            unknown = sorted(set(self.cpus) - allowed)
            if not self.cpus or unknown:
                raise UserError(f"--cpus {','.join(map(str, self.cpus))}: CPU {unknown[0] if unknown else '?'} is "
                                f"not available here (available: {','.join(map(str, sorted(allowed)))})")


def _check_measurement_settings(config: RunConfig) -> None:
    from requestflow.board.latency_stats import PROFILES

    for name, value, minimum in (("min_duration_s", config.min_duration_s, 0.0),
                                 ("power_rate_hz", config.power_rate_hz, 1e-3), ("idle_s", config.idle_s, 0.0)):
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or value < minimum):
            raise UserError(f"--{name.replace('_', '-')} must be a number >= {minimum:g}, got {value}")
    if config.profile is not None and config.profile not in PROFILES:
        raise UserError(f"unknown profile {config.profile!r}; known: {', '.join(PROFILES)}")
    if config.power_meter not in (None, "none") and config.mode != "performance":
        raise UserError("--power-meter measures performance runs; accuracy runs are not timed")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; known: {', '.join(allowed)}")


MAX_CPUS = 8192  # Linux's largest CONFIG_NR_CPUS on the boards' architectures


def parse_cpus(text: str) -> list[int]:
    """``0-3,6`` -> [0, 1, 2, 3, 6]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                low, high = part.split("-")
                if int(high) >= MAX_CPUS:  # before the range is made: 0-99999999999 would fill the memory
                    raise UserError(f"--cpus {text!r}: CPU {int(high)} is not available here (no board has more than "
                                    f"{MAX_CPUS} CPUs)")
                out.extend(range(int(low), int(high) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--cpus {text!r}: expected a list like 0-3,6") from None
    return sorted(set(out))


def pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process to ``cpus`` (``sched_setaffinity(0)`` alone pins only the calling thread;
    threads started later inherit the mask)."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            pass
    os.sched_setaffinity(0, cpus)


def default_images() -> tuple[str | None, str | None]:
    data = shared_data_dir()
    if data and (data / "imagenet/val").is_dir():
        return str(data / "imagenet/val"), str(data / "imagenet/val.txt")
    return None, None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def statistics(samples_s: list[float], batch_size: int) -> dict:
    array = np.asarray(samples_s, np.float64)
    median = float(np.median(array))
    return {
        "unit": "s",
        "samples": [float(s) for s in samples_s],
        "n": int(array.size),
        "min": float(array.min()),
        "median": median,
        "mean": float(array.mean()),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
        "stdev": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "throughput_ips": batch_size / median if median > 0 else None,
    }


_backend_loads = 0  # in this process: only the first is a cold start from the process's own start


def cold_start(timings: dict) -> dict:
    """``cold_start`` of the document, at the moment the backend is ready: the seconds since this process started
    (interpreter, imports, weights, graph build / kernel compilation / tuning: everything before the first
    inference), known only for the process's first backend; the first inference's latency is added after it ran."""
    global _backend_loads
    _backend_loads += 1
    first = _backend_loads == 1
    return {"process_start_to_ready_s": process_age_s() if first else None, "first_in_process": first,
            "weights_load_s": timings.get("weights_load_s"), "backend_load_s": timings.get("setup_s"),
            "first_inference_s": None, "first_over_median": None}


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat's start time against /proc/uptime; 10 ms steps)."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return round(max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")), 3)
    except (OSError, ValueError, IndexError):
        return None


def top_k(scores: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the k highest scores per row, highest first; ties broken by the lower class index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


class Heartbeat:
    """Progress lines for whoever watches the runner (the controller's wait loop, issue #22), printed or not: one
    JSON object a line, appended to the file ``$REQUESTFLOW_PROGRESS`` names (nothing without it), at most every
    ``PROGRESS_EVERY_S``: ``stage``, ``done``, ``total`` and, once known, ``expect_s``: the seconds the rest of the
    stage should take at the pace seen so far (before its first item: ``per_item_s``, e.g. the warm-up's)."""

    def __init__(self, path: str | None) -> None:
        self.path, self.last = path, 0.0

    def stage(self, name: str, total: int, per_item_s: float | None = None) -> None:
        self.name, self.total, self.per_item_s, self.started = name, total, per_item_s, time.monotonic()
        self.beat(0, force=True)

    def beat(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        line = {"stage": self.name, "done": done, "total": self.total}
        per_item = (now - self.started) / done if done else self.per_item_s
        if per_item is not None:
            line["expect_s"] = round(per_item * (self.total - done), 3)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line) + "\n")


class Runner:
    def __init__(self, config: RunConfig):
        config.validate()
        self.config = config
        self.model = catalogue.get_model(config.model)
        self.timings: dict[str, float] = {}
        self.heartbeat = Heartbeat(os.environ.get(PROGRESS_ENV) or None)
        self.meter = self.sampler = None
        self.first_inference_s = self.duration_s = None

    def prepare(self) -> None:
        """Everything that can refuse bad input, before any backend runs."""
        from requestflow.board import dataset as ds
        from requestflow.board import resolve

        config = self.config
        if config.cpus:
            pin_process(config.cpus)  # before any library starts its threads: they inherit the mask
        images, val_txt = config.images, config.val_txt
        if images is None and (config.mode == "accuracy" or config.val_txt):
            images, default_val = default_images()
            val_txt = val_txt or default_val
            if images is None:
                raise UserError("accuracy mode needs images: pass --images DIR (and --val-txt FILE), or make the "
                                "shared data folder available ($REQUESTFLOW_DATA)")
        start = time.perf_counter()
        self.dataset = ds.load_dataset(images, val_txt, config.synset_words, config.limit) if images else None
        if self.dataset and config.mode == "performance" and len(self.dataset.files) < config.batch_size:
            raise UserError(f"--batch-size {config.batch_size} needs at least that many images; "
                            f"{len(self.dataset.files)} selected")
        self.timings["images_list_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if config.weights:
            self.weights = resolve.from_paths(config.weights, self.model)
        else:
            self.weights = resolve.resolve(self.model, config.backend, config.precision, config.release,
                                           allow_download=config.allow_download,
                                           allow_random=config.mode == "performance")
        if self.weights.random and config.mode == "accuracy":
            raise UserError("accuracy needs real weights; random weights are for performance runs only")
        if not self.weights.random:
            self.weights.canonical_for(self.model)  # every tensor's shape checked now: a mismatch is bad input
        self.timings["weights_load_s"] = time.perf_counter() - start
        from requestflow.board.power import parse_meter

        self.meter = parse_meter(self.config.power_meter)  # a bad or absent meter refuses here, before any run

    def run(self) -> dict:
        """The result document. ``prepare()`` first; exceptions after it become a failed document."""
        config = self.config
        started = _now()
        total_start = time.perf_counter()
        if config.cpus:
            pin_process(config.cpus)
        from requestflow.board.machine import machine_info, snapshot_frequencies_and_temperatures

        document = {
            "schema_version": SCHEMA_VERSION,
            "requestflow_version": requestflow.__version__,
            "status": "ok",
            "started_at": started,
            "command": config.command,
            "context": self._context(backend_info=None, precision=config.precision),
            "machine": machine_info(),
            "timings": self.timings,
        }
        before = snapshot_frequencies_and_temperatures()
        backend, loaded = None, False
        try:
            from requestflow.board.backends import create_backend
            threads = config.threads or len(os.sched_getaffinity(0))
            backend = create_backend(config.backend, self.model, self.weights, config.batch_size, threads,
                                     config.variant, config.armcl_build)
            self.heartbeat.stage("setup", 1)
            start = time.perf_counter()
            backend.load()
            loaded = True
            self.timings["setup_s"] = time.perf_counter() - start
            document["cold_start"] = cold_start(self.timings)
            if config.precision is not None and backend.precision != config.precision:
                raise UserError(f"--precision {config.precision}, but the weights run as {backend.precision}")
            document["context"] = self._context(backend.info(), backend.precision, backend.input_dtype.name,
                                                backend.classes)
            start = time.perf_counter()
            pixels, ok, failed = self._pixels()
            self.timings["images_load_s"] = time.perf_counter() - start
            start = time.perf_counter()
            if config.mode == "performance":
                document["performance"] = self._performance(backend, pixels)
            else:
                document["accuracy"], document["predictions"] = self._accuracy(backend, pixels, ok, failed)
            self.timings["run_s"] = time.perf_counter() - start
        except UserError:
            raise
        except Exception as exc:  # the point failed: its document says why, and is stored as failed
            document["status"] = "failed"
            document["error"] = {"type": type(exc).__name__, "message": str(exc),
                                 "traceback": traceback.format_exc(limit=20)}
        finally:
            if backend is not None:
                backend.close()
            self._stop_sampling(document)
        if loaded:  # what a backend learns only once closed (armcl: the OpenCL shim's counters); not identity
            document["context"]["backend"].update(backend.after_close())
        document["environment"] = {"before": before, "after": snapshot_frequencies_and_temperatures()}
        if "performance" in document:  # however the samples were timed (runner loop or a backend's measure())
            from requestflow.board.quality import assess

            document["performance"]["quality"] = assess(
                document["performance"]["samples"], before, document["environment"]["after"],
                cpus=document["context"]["cpu_affinity"],
                emulated=document["machine"].get("emulated") or document["context"]["backend"].get("emulated"),
                calibration=document["performance"].get("calibration"))
            self._latency(document)
        self.timings["total_s"] = time.perf_counter() - total_start
        document["finished_at"] = _now()
        return document

    def identify(self) -> dict:
        """The point's context as ``run`` records it, with the backend loaded but nothing measured: what resuming
        a sweep hashes (``requestflow.results.identity``) to find the points already stored."""
        from requestflow.board.backends import create_backend

        config = self.config
        threads = config.threads or len(os.sched_getaffinity(0))
        backend = create_backend(config.backend, self.model, self.weights, config.batch_size, threads,
                                 config.variant, config.armcl_build)
        try:
            backend.load()
            return self._context(backend.info(), backend.precision, backend.input_dtype.name, backend.classes)
        finally:
            backend.close()
            if self.meter is not None:  # nothing is measured: a command meter's program ends here
                self.meter.close()
                self.meter = None

    def _context(self, backend_info, precision, input_dtype=None, classes=None) -> dict:
        from requestflow.board.dataset import preprocessing_parameters

        config = self.config
        model = self.model
        return {
            "model": {"id": model.id, "width": model.width, "resolution": model.resolution, "classes": classes,
                      "macs": model.macs, "params": model.params},
            "backend": backend_info or {"name": config.backend},
            "precision": precision,
            "weights": self.weights.describe(),
            "dataset": self.dataset.describe() if self.dataset else {"synthetic": True},
            "mode": config.mode,
            "batch_size": config.batch_size,
            "threads": config.threads or len(os.sched_getaffinity(0)),
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
            "preprocessing": preprocessing_parameters(model.resolution, input_dtype) if input_dtype else None,
            "repetitions": config.repetitions if config.mode == "performance" else None,
            "warmup": config.warmup if config.mode == "performance" else None,
        }

    def _pixels(self):
        from requestflow.board.dataset import preprocess_dataset

        config, res = self.config, self.model.resolution
        if self.dataset is None:  # performance on synthetic input: deterministic noise
            rng = np.random.default_rng(0)
            return rng.integers(0, 256, (config.batch_size, res, res, 3), dtype=np.uint8), [], []
        dataset = self.dataset
        if config.mode == "performance":  # only the first batch is needed
            from requestflow.board.dataset import Dataset
            dataset = Dataset(dataset.images_dir, dataset.files[: config.batch_size],
                              dataset.labels[: config.batch_size], dataset.val_txt, dataset.val_txt_sha256,
                              dataset.class_names)
        prepared = preprocess_dataset(dataset, res, progress=config.progress)
        if config.mode == "performance" and prepared.failed:
            raise RuntimeError(f"cannot read {prepared.failed[0]['file']}: {prepared.failed[0]['error']}")
        if config.mode == "accuracy" and not prepared.ok:
            raise RuntimeError(f"none of the {len(dataset.files)} images could be read")
        return prepared.pixels, prepared.ok, prepared.failed

    def _performance(self, backend, pixels: np.ndarray) -> dict:
        from requestflow.board.calibration import Calibration

        config = self.config
        backend.set_input(np.ascontiguousarray(pixels[: config.batch_size]))
        self.calibration = Calibration()
        timed_region = "backend invoke() of one batch, input already set"
        self.first_inference_s = None
        if hasattr(backend, "measure"):  # a backend that times itself (armcl: inside its native program)
            samples = self._measure(backend)
            timed_region = backend.timed_region
        else:
            beat = self.heartbeat
            self._idle_baseline()
            beat.stage("warmup", config.warmup)
            start = time.perf_counter()
            if config.warmup:
                self.first_inference_s = self._first_inference(backend)  # the first warm-up run, timed alone
            for _ in range(config.warmup - 1 if config.warmup else 0):
                backend.invoke()
            warm = (time.perf_counter() - start) / config.warmup if config.warmup else None
            beat.stage("repetitions", config.repetitions, per_item_s=warm)
            samples = [0] * config.repetitions
            invoke, clock = backend.invoke, time.perf_counter_ns
            runs = progress(range(config.repetitions), description="repetitions", enabled=config.progress,
                            leave=False, mininterval=0.5)  # made before the timed region: tqdm's import is not in it
            like = self._cpu_of_one_run(backend) if config.warmup else None  # one more warm-up run
            self.calibration.time("before", like)  # the machine's speed just before and after the timed region
            self._mark("active_start")
            region = clock()
            for i in runs:
                start = clock()
                invoke()
                samples[i] = clock() - start
                beat.beat(i + 1)  # outside the timed region
            samples += self._until(invoke, clock, region)
            self.duration_s = (clock() - region) / 1e9
            self._mark("active_end")
            self.calibration.time("after")
            if self.first_inference_s is None:  # no warm-up: the first timed run was the first inference
                self.first_inference_s = samples[0] / 1e9
        stats = statistics([s / 1e9 for s in samples], config.batch_size)
        stats.update({"repetitions": config.repetitions, "warmup": config.warmup, "batch_size": config.batch_size,
                      "timed_region": timed_region,
                      "input": "synthetic" if self.dataset is None else "dataset"})
        stats.update(self._run_settings())
        calibration = self.calibration.document()
        if calibration is not None:
            stats["calibration"] = calibration
        return stats

    # -- duration-bound runs, cold start, power: requestflow.board.latency_stats and requestflow.board.power -----------
    def _until(self, invoke, clock, region_start_ns: int) -> list[int]:
        """More timed runs (ns each) until the timed region that began at ``region_start_ns`` lasted
        ``min_duration_s`` (LoadGen's min_duration); none when it has, or none is asked."""
        deadline = region_start_ns + int(self.config.min_duration_s * 1e9)
        more: list[int] = []
        append = more.append
        while clock() < deadline:
            start = clock()
            invoke()
            append(clock() - start)
            if len(more) % 64 == 0:
                self.heartbeat.beat(self.config.repetitions + len(more))  # outside the timed region
        return more

    def _measure(self, backend) -> list[float]:
        """A backend that times itself (armcl): its samples (ns), and as many more as ``min_duration_s`` needs."""
        config = self.config
        self._idle_baseline()
        if self.sampler is not None:
            self.sampler.error = ("the armcl backend times itself inside its native program: its timed region "
                                  "cannot be marked for the power meter")
        start = time.perf_counter()
        self.calibration.time("before")
        samples = [s * 1e9 for s in backend.measure(config.warmup, config.repetitions)]
        self.duration_s = sum(samples) / 1e9
        if self.duration_s < config.min_duration_s and samples:
            more = math.ceil((config.min_duration_s - self.duration_s) / (self.duration_s / len(samples)))
            samples += [s * 1e9 for s in backend.measure(0, more)]
            self.duration_s = sum(samples) / 1e9
        self.calibration.time("after")
        self.timings["measure_s"] = time.perf_counter() - start
        return samples

    def _run_settings(self) -> dict:
        from requestflow.board.latency_stats import profile_settings

        config = self.config
        profile = profile_settings(config.profile, config.repetitions, config.warmup, config.min_duration_s)
        return {"profile": profile, "duration_s": self.duration_s}

    def _first_inference(self, backend) -> float:
        start = time.perf_counter()
        backend.invoke()
        return time.perf_counter() - start

    def _cpu_of_one_run(self, backend) -> float:
        """One more warm-up run: the CPU seconds this thread spent in it (the calibration's samples take as much)."""
        start = time.thread_time()
        backend.invoke()
        return time.thread_time() - start

    def _idle_baseline(self) -> None:
        """With a power meter: start sampling, and read the board idle (backend loaded, nothing running)."""
        from requestflow.board.power import Sampler

        if self.meter is None:
            return
        self.sampler = Sampler(self.meter, self.config.power_rate_hz)
        self.sampler.start()
        self.sampler.mark("idle_start")
        time.sleep(self.config.idle_s)
        self.sampler.mark("idle_end")

    def _mark(self, name: str) -> None:
        if self.sampler is not None:
            self.sampler.mark(name)

    def _stop_sampling(self, document: dict) -> None:
        """``energy`` from the sampler (invalid with its reason when the meter failed); the meter closed."""
        from requestflow.board.power import energy_summary

        sampler, self.sampler = self.sampler, None
        if self.meter is not None and sampler is not None:
            sampler.stop()
            runs = len(document.get("performance", {}).get("samples", ()))
            document["energy"] = energy_summary(sampler, runs, self.config.batch_size)
            if document["status"] != "ok" and document["energy"]["valid"]:
                document["energy"].update(valid=False, reason="the run failed")
        if self.meter is not None:
            self.meter.close()
            self.meter = None

    def _latency(self, document: dict) -> None:
        """``performance.latency`` (percentiles, intervals, early stopping) and the first inference's latency."""
        from requestflow.board.latency_stats import latency_statistics

        performance = document["performance"]
        performance["latency"] = latency_statistics(performance["samples"])
        cold = document.get("cold_start")
        if cold is not None:
            first = self.first_inference_s
            cold["first_inference_s"] = first
            cold["first_over_median"] = first / performance["median"] if first and performance["median"] > 0 else None

    def _accuracy(self, backend, pixels: np.ndarray, ok: list[int], failed: list[dict]):
        config, dataset, batch = self.config, self.dataset, self.config.batch_size
        predictions, top1, top5 = [], 0, 0
        buffer = np.zeros((batch, *pixels.shape[1:]), np.uint8)
        bar = progress(total=len(ok), description="classify", enabled=config.progress, unit="img", leave=False)
        self.heartbeat.stage("classify", len(ok))
        for start in range(0, len(ok), batch):
            count = min(batch, len(ok) - start)
            buffer[:count] = pixels[start:start + count]
            backend.set_input(buffer)
            backend.invoke()
            scores = backend.scores()[:count]
            best = top_k(scores)
            for row in range(count):
                index = ok[start + row]
                label = dataset.labels[index]
                classes = [int(c) for c in best[row]]
                top1 += classes[0] == label
                top5 += label in classes
                predictions.append({"file": dataset.files[index], "label": label,
                                    "top5": [[c, round(float(scores[row, c]), 6)] for c in classes]})
            bar.update(count)
            self.heartbeat.beat(start + count)
        bar.close()
        n = len(predictions)
        accuracy = {"n": n, "top1": top1 / n, "top5": top5 / n, "correct_top1": top1, "correct_top5": top5,
                    "selected": len(dataset.files), "failed_count": len(failed), "failed_images": failed,
                    "label_offset": "model class k+1 = ImageNet class k" if backend.classes == 1001 else "none"}
        return accuracy, predictions


def run(config: RunConfig) -> dict:
    runner = Runner(config)
    runner.prepare()
    return runner.run()

