"""What a run records besides its samples: ``statistics`` of the samples, ``cold_start`` (``process_age_s``), the
progress lines of ``Heartbeat`` (``PROGRESS_ENV``), ``top_k`` and the accuracy loop (``classify``), and how the
run's process was isolated (``isolation``: a fresh process, or a child forked by the board's point server,
``requestflow.board.point_server``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterable

import numpy as np

from requestflow.board.files import progress

PROGRESS_ENV = "REQUESTFLOW_PROGRESS"  # the file progress lines go to, --quiet or not (``Heartbeat``)
PROGRESS_EVERY_S = 1.0


def now() -> str:
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


def classify(backend, images: Iterable[tuple[int, np.ndarray | None]], total: int, failed: list[dict], dataset,
             batch: int, heartbeat: Heartbeat, show_progress: bool) -> tuple[dict, list[dict]]:
    """Accuracy mode: every readable image once, in batches of ``batch`` readable images in dataset order;
    ``images`` gives ``(index into dataset, uint8 pixels)`` (``total`` of them; pixels None for an unreadable one,
    which ``failed`` names by the end: ``image_stream.PixelStream``). The document's ``accuracy`` and
    ``predictions`` (each image's top-5)."""
    predictions, top1, top5 = [], 0, 0
    buffer, indices = None, []
    bar = progress(total=total, description="classify", enabled=show_progress, unit="img", leave=False)
    heartbeat.stage("classify", total)

    def run_batch() -> None:
        nonlocal top1, top5
        backend.set_input(buffer)  # rows past a short last batch keep the batch before's images, as they always did
        backend.invoke()
        count = len(indices)
        scores = backend.scores()[:count]
        best = top_k(scores)
        for row, index in enumerate(indices):
            label = dataset.labels[index]
            classes = [int(c) for c in best[row]]
            top1 += classes[0] == label
            top5 += label in classes
            predictions.append({"file": dataset.files[index], "label": label,
                                "top5": [[c, round(float(scores[row, c]), 6)] for c in classes]})
        indices.clear()

    for seen, (index, pixels) in enumerate(images, start=1):
        if pixels is not None:
            if buffer is None:
                buffer = np.zeros((batch, *pixels.shape), np.uint8)
            buffer[len(indices)] = pixels
            indices.append(index)
            if len(indices) == batch:
                run_batch()
        bar.update(1)
        heartbeat.beat(seen)
    if indices:
        run_batch()
    bar.close()
    n = len(predictions)
    if n == 0:
        raise RuntimeError(f"none of the {len(dataset.files)} images could be read")
    accuracy = {"n": n, "top1": top1 / n, "top5": top5 / n, "correct_top1": top1, "correct_top5": top5,
                "selected": len(dataset.files), "failed_count": len(failed), "failed_images": failed,
                "label_offset": "model class k+1 = ImageNet class k" if backend.classes == 1001 else "none"}
    return accuracy, predictions


ISOLATIONS = ("fresh", "fork")  # a process started for the point; a child of the point server
_isolation: dict = {"mode": "fresh"}  # this process's: a point server's child says otherwise (set_isolation)


def isolation() -> dict:
    """The document's ``isolation``: ``mode`` ``fresh`` (this process was started for the point) or ``fork`` (a child
    the board's point server forked for it, with what the server had imported before: ``point_server``)."""
    return json.loads(json.dumps(_isolation))


def set_isolation(info: dict) -> None:
    _isolation.clear()
    _isolation.update(info)
