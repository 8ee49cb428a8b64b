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

import gc
import math
import os
import time
import traceback
from pathlib import Path

import numpy as np

import requestflow
from requestflow.board import catalogue
from requestflow.board.files import progress
from requestflow.board.run_config import RunConfig, default_images, parse_cpus, pin_process
from requestflow.board.run_record import (
    PROGRESS_ENV,
    Heartbeat,
    classify,
    cold_start,
    isolation,
    now,
    process_age_s,
    statistics,
    top_k,
)
from requestflow.errors import UserError

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION", "PROGRESS_ENV", "Heartbeat", "RunConfig", "Runner", "parse_cpus",
           "pin_process", "process_age_s", "run", "statistics", "top_k"]

SCHEMA_VERSION = 2  # 2: performance.latency, performance.profile, energy, cold_start
SCHEMA_PATH = Path(__file__).with_name("result.schema.json")


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
        started = now()
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
            "isolation": isolation(),
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
            if config.mode == "performance":
                pixels = self._pixels()
                self.timings["images_load_s"] = time.perf_counter() - start
                start = time.perf_counter()
                document["performance"] = self._performance(backend, pixels)
            else:  # the images decoded while the backend classifies them: images_load_s opens the cache only
                with self._image_stream() as images:
                    self.timings["images_load_s"] = time.perf_counter() - start
                    start = time.perf_counter()
                    document["accuracy"], document["predictions"] = self._accuracy(backend, images)
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
        document["finished_at"] = now()
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

    def _pixels(self) -> np.ndarray:
        """A performance run's input: the first batch of its images, or deterministic noise without images."""
        from requestflow.board.dataset import Dataset
        from requestflow.board.image_stream import preprocess_dataset

        config, res = self.config, self.model.resolution
        if self.dataset is None:  # performance on synthetic input: deterministic noise
            rng = np.random.default_rng(0)
            return rng.integers(0, 256, (config.batch_size, res, res, 3), dtype=np.uint8)
        dataset = self.dataset  # only the first batch is needed
        dataset = Dataset(dataset.images_dir, dataset.files[: config.batch_size], dataset.labels[: config.batch_size],
                          dataset.val_txt, dataset.val_txt_sha256, dataset.class_names)
        prepared = preprocess_dataset(dataset, res, progress=config.progress)
        if prepared.failed:
            raise RuntimeError(f"cannot read {prepared.failed[0]['file']}: {prepared.failed[0]['error']}")
        return prepared.pixels

    def _image_stream(self):
        """An accuracy run's images (``image_stream.PixelStream``): the board's preprocessed cache's, else decoded on
        every CPU of the run's affinity while the backend classifies them, and cached for the points after it."""
        from requestflow.board.image_stream import PixelStream

        return PixelStream(self.dataset, self.model.resolution)

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
            # the collector off what was made so far, as a forked child's server froze its imports (point_preload):
            # no timed run pays for a full collection of the point's lasting objects in either isolation (free)
            gc.freeze()
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
            every, between = self.calibration.every_for(config.repetitions), self.calibration.between
            self.calibration.time("before", like)  # the machine's speed just before and after the timed region
            self._mark("active_start")
            region = clock()
            for i in runs:
                start = clock()
                invoke()
                samples[i] = clock() - start
                beat.beat(i + 1)  # outside the timed region
                if i % every == every - 1:  # and during it, between two runs: it sees what the runs see
                    between()
            samples += self._until(invoke, clock, region)
            self.duration_s = (clock() - region) / 1e9
            self._mark("active_end")
            self.calibration.time("after")
            gc.unfreeze()
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
            if len(more) % 64 == 0:  # calibration.EVERY_AFTER
                self.heartbeat.beat(self.config.repetitions + len(more))  # outside the timed region
                self.calibration.between()
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
    def _accuracy(self, backend, images):
        return classify(backend, images, images.total, images.failed, self.dataset, self.config.batch_size,
                        self.heartbeat, self.config.progress)


def run(config: RunConfig) -> dict:
    runner = Runner(config)
    runner.prepare()
    return runner.run()
