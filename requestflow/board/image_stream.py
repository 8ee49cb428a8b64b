"""Preprocessed images as a stream (issue #20): decoded by a bounded pool of threads while their consumer (the
accuracy run's backend) uses them, written to the board's preprocessed cache as they come, the cache entry
committed once every image went through.

Pillow's decoder, crop and resize and numpy's copies release the GIL, so the pool's threads decode on every core
while the backend invokes (LiteRT and TensorFlow release it too). At most ``ahead`` images are decoded ahead of the
consumer: memory stays bounded whatever the image count. Images come in dataset order whatever order the threads
finish in, so a run's batches (and so its predictions) are those of a run on the whole preprocessed array.

The cache (``requestflow.board.dataset``: keyed by the file list and sizes, the resolution and every preprocessing
parameter, the uint8 pixels every precision starts from) is shared by every point of a board: the first accuracy
point of a resolution fills it while it classifies, the others read it (``PixelStream`` on a cached entry iterates
its memory map).
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from requestflow.board.dataset import Dataset, Preprocessed, cache_folder, load_cached, preprocess_image
from requestflow.board.files import atomic_write_text
from requestflow.board.files import progress as show_progress


def decoded(dataset: Dataset, resolution: int, workers: int, ahead: int) -> Iterator[tuple[int, np.ndarray | None,
                                                                                             str | None]]:
    """``(index, uint8 pixels or None, error or None)`` of every image of ``dataset``, in order, made by ``workers``
    threads at most ``ahead`` images ahead of the consumer. An unreadable image is its error (any decoder
    exception: the run goes on without it)."""

    def work(index: int):
        try:
            return index, preprocess_image(dataset.images_dir / dataset.files[index], resolution), None
        except Exception as exc:  # any decoder error: the image is counted, named, and the run goes on
            return index, None, f"{type(exc).__name__}: {exc}"

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="preprocess", initializer=_yielding)
    try:
        indices = iter(range(len(dataset.files)))
        pending = deque(pool.submit(work, index) for _, index in zip(range(max(1, ahead)), indices, strict=False))
        while pending:
            done = pending.popleft().result()
            following = next(indices, None)
            if following is not None:
                pending.append(pool.submit(work, following))
            yield done
    finally:  # the consumer stopped (a backend error): the images not begun are not decoded
        pool.shutdown(wait=True, cancel_futures=True)


DECODER_NICENESS = 5  # added to a decoding thread's niceness: the backend's threads preempt it, not the reverse


def _yielding() -> None:
    """A decoding thread runs DECODER_NICENESS nicer than the thread that started it (Linux: per thread), so that
    a backend's thread pool, whose every invoke waits for its slowest thread, is not held up by the decoding it
    overlaps with. Measured in-process on 2 busy cores (load 15), paired over 14 rounds against the runner that
    preprocessed the whole array first: 1.26x its images/s without, 1.32x and 1.17x with, within the noise there
    (bench/RESULTS.md). Where it cannot be set, nothing changes."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + DECODER_NICENESS))
    except (OSError, AttributeError):
        pass


class PixelStream:
    """The accuracy run's images: iterating gives ``(index, pixels)`` of every image of ``dataset`` in order, pixels
    None for an unreadable one (named in ``failed`` as it is met). From the cache when it has them (``cached``),
    else decoded as they are used and written to the cache, committed when the last one was given (``use_cache``
    False: kept in memory instead, nothing written). ``close()`` removes an uncommitted cache file."""

    def __init__(self, dataset: Dataset, resolution: int, workers: int | None = None, use_cache: bool = True,
                 ahead: int | None = None) -> None:
        self.dataset, self.resolution, self.use_cache = dataset, resolution, use_cache
        self.workers = workers or len(os.sched_getaffinity(0))
        self.ahead = ahead or 4 * self.workers + 16
        self.folder = cache_folder(dataset, resolution)
        self.entry: Preprocessed | None = load_cached(self.folder) if use_cache else None
        self.cached = self.entry is not None
        self.failed: list[dict] = list(self.entry.failed) if self.entry else []
        self.ok: list[int] = list(self.entry.ok) if self.entry else []
        self.total = len(self.ok) if self.entry else len(dataset.files)  # images the consumer will be given
        self.staging = self.folder / f".pixels.{os.getpid()}.{id(self)}.npy"
        self.pixels: np.ndarray | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray | None]]:
        if self.entry is not None:
            for position, index in enumerate(self.entry.ok):
                yield index, self.entry.pixels[position]
            return
        shape = (len(self.dataset.files), self.resolution, self.resolution, 3)
        if self.use_cache:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.pixels = np.lib.format.open_memmap(self.staging, mode="w+", dtype=np.uint8, shape=shape)
        else:
            self.pixels = np.empty(shape, np.uint8)
        for index, array, error in decoded(self.dataset, self.resolution, self.workers, self.ahead):
            if error is None:
                self.pixels[len(self.ok)] = array
                self.ok.append(index)
            else:
                self.failed.append({"file": self.dataset.files[index], "error": error})
            yield index, array
        self.entry = self._commit()

    def _commit(self) -> Preprocessed:
        """The finished entry: moved into the cache (a concurrent run's identical entry replaced) and read back as
        a memory map, or the in-memory array."""
        if not self.use_cache:
            return Preprocessed(self.pixels[: len(self.ok)], self.ok, self.failed, False)
        self.pixels.flush()
        self.pixels = None
        os.replace(self.staging, self.folder / "pixels.npy")
        atomic_write_text(self.folder / "meta.json", json.dumps({"ok": self.ok, "failed": self.failed}))
        pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
        return Preprocessed(pixels[: len(self.ok)], self.ok, self.failed, False)

    def close(self) -> None:
        self.pixels = None
        self.staging.unlink(missing_ok=True)

    def __enter__(self) -> PixelStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def preprocess_dataset(dataset: Dataset, resolution: int, progress: bool = True, workers: int | None = None,
                       use_cache: bool = True) -> Preprocessed:
    """uint8 tensors of every readable image, from the cache when present. Unreadable images are listed.

    The tensors are written to the cache file as they are made (a memory map), so 50,000 images need disk, not
    memory: a board with 2 GB preprocesses the whole validation set. An accuracy run uses the same images as a
    stream instead (``PixelStream``), classifying while they are decoded.
    """
    with PixelStream(dataset, resolution, workers=workers, use_cache=use_cache) as stream:
        if stream.cached:
            return stream.entry
        bar = show_progress(total=len(dataset.files), description=f"preprocess {resolution}px", enabled=progress,
                            unit="img", leave=False)
        for _ in stream:
            bar.update(1)
        bar.close()
        return stream.entry
