"""Accuracy with decoding overlapped with inference (issue #20, ``requestflow.board.image_stream``): the first run
of an image set classifies while its images are decoded and fills the board's preprocessed cache, the runs after
read the cache; top-1, top-5 and every prediction are those of the whole preprocessed array classified in batches,
as the runner did before (that loop is written out below), unreadable image and short last batch included."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from requestflow.board.backends import create_backend
from requestflow.board.catalogue import get_model
from requestflow.board.dataset import load_dataset
from requestflow.board.image_stream import PixelStream, preprocess_dataset
from requestflow.board.resolve import from_paths
from requestflow.board.run_record import Heartbeat, classify, top_k
from requestflow.board.runner import RunConfig, run

MODEL = "mobilenet-v1-0.25-128"
WEIGHTS = "mobilenet_v1_0.25_128_quant.tflite"
BATCH = 4  # stand-in backend (the shared .tflite files run batch 1 only)
COUNT = 23  # 22 readable: five batches of four and a short one of two


@pytest.fixture(scope="module")
def images(data_dir, tmp_path_factory):
    """23 shared ImageNet images, the 8th replaced by bytes no decoder reads, with their classes."""
    folder = tmp_path_factory.mktemp("stream")
    val = folder / "val"
    val.mkdir()
    names = sorted(n for n in os.listdir(data_dir / "imagenet" / "val") if n.endswith(".JPEG"))[:COUNT]
    for name in names:
        shutil.copy(data_dir / "imagenet" / "val" / name, val / name)
    (val / names[7]).write_bytes(b"not a JPEG")
    truth = dict(line.split() for line in (data_dir / "imagenet" / "val.txt").read_text().splitlines() if line)
    (folder / "val.txt").write_text("".join(f"{name} {truth[name]}\n" for name in names))
    shutil.copy(data_dir / "imagenet" / "synset_words.txt", folder / "synset_words.txt")
    return val


class RowSums:
    """A stand-in backend for batches the shared .tflite files cannot run: each row's 1001 scores from its own
    pixels only, as a network's are."""

    classes = 1001

    def __init__(self, batch: int) -> None:
        self.weights = np.random.default_rng(0).standard_normal((3, 1001)).astype(np.float32)

    def set_input(self, batch: np.ndarray) -> None:
        self.batch = batch.astype(np.float32).mean(axis=(1, 2)) / 255  # a copy, as set_tensor makes

    def invoke(self) -> None:
        self.out = self.batch @ self.weights

    def scores(self) -> np.ndarray:
        return self.out[:, 1:]  # model class k+1 = ImageNet class k


def before(dataset, backend, batch: int) -> list[dict]:
    """The predictions of the runner before issue #20: every image preprocessed first, then the array classified in
    batches of ``batch`` (a short last batch's other rows keep the batch before's images)."""
    prepared = preprocess_dataset(dataset, 128, progress=False, use_cache=False)
    predictions, pixels, ok = [], prepared.pixels, prepared.ok
    buffer = np.zeros((batch, *pixels.shape[1:]), np.uint8)
    for start in range(0, len(ok), batch):
        count = min(batch, len(ok) - start)
        buffer[:count] = pixels[start:start + count]
        backend.set_input(buffer)
        backend.invoke()
        scores = backend.scores()[:count]
        for row, classes in enumerate(top_k(scores)):
            index = ok[start + row]
            predictions.append({"file": dataset.files[index], "label": dataset.labels[index],
                                "top5": [[int(c), round(float(scores[row, c]), 6)] for c in classes]})
    return predictions


def check(accuracy: dict, predictions: list[dict], expected: list[dict], images) -> None:
    assert predictions == expected
    assert accuracy["n"] == COUNT - 1 and accuracy["failed_count"] == 1
    assert accuracy["failed_images"][0]["file"] == sorted(os.listdir(images))[7]
    top1 = sum(p["top5"][0][0] == p["label"] for p in expected)
    assert accuracy["correct_top1"] == top1 and accuracy["top1"] == top1 / (COUNT - 1)
    assert accuracy["correct_top5"] == sum(p["label"] in [c for c, _ in p["top5"]] for p in expected)


def test_cold_and_warm_runs_predict_exactly_what_the_whole_array_did(models_dir, images, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
    model = get_model(MODEL)
    backend = create_backend("tflite", model, from_paths([str(models_dir / WEIGHTS)], model), 1, 2)
    backend.load()
    expected = before(load_dataset(images), backend, 1)
    backend.close()
    config = RunConfig(model=MODEL, backend="tflite", mode="accuracy", weights=[str(models_dir / WEIGHTS)],
                       images=str(images), val_txt=str(images.parent / "val.txt"), threads=2, progress=False)
    cold = run(config)  # decoded while classified: the cache filled as it goes
    assert list((tmp_path / "cache" / "preprocessed").glob("*/pixels.npy"))
    assert not list((tmp_path / "cache" / "preprocessed").glob("*/.pixels.*"))  # nothing half-written left
    warm = run(config)  # from the cache
    for document in (cold, warm):
        assert document["status"] == "ok", document.get("error")
        check(document["accuracy"], document["predictions"], expected, images)
    assert cold["context"] == warm["context"]  # the same point, whichever way its images came


def test_batches_with_a_short_last_one_are_those_of_the_whole_array(images, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset(images)
    expected = before(dataset, RowSums(BATCH), BATCH)
    for _ in ("cold", "warm"):
        with PixelStream(dataset, 128) as stream:
            accuracy, predictions = classify(RowSums(BATCH), stream, stream.total, stream.failed, dataset, BATCH,
                                             Heartbeat(None), False)
        check(accuracy, predictions, expected, images)
    assert stream.cached


def test_the_stream_gives_the_images_in_order_and_caches_what_the_whole_array_holds(images, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset(images)
    whole = preprocess_dataset(dataset, 128, progress=False, use_cache=False)
    with PixelStream(dataset, 128, workers=3, ahead=2) as stream:  # fewer ahead than workers: still in order
        assert not stream.cached and stream.total == COUNT
        given = [(index, pixels) for index, pixels in stream]
    assert [index for index, _ in given] == list(range(COUNT))
    np.testing.assert_array_equal(np.stack([p for _, p in given if p is not None]), whole.pixels)
    with PixelStream(dataset, 128) as again:
        assert again.cached and again.total == COUNT - 1 and again.failed == whole.failed
        np.testing.assert_array_equal(np.asarray(again.entry.pixels), whole.pixels)


def test_a_consumer_that_stops_leaves_no_cache_entry(images, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset(images)
    with PixelStream(dataset, 128) as stream:
        for position, _ in enumerate(stream):
            if position == 5:
                break  # a backend error mid-run
    assert not [p for p in (tmp_path / "cache" / "preprocessed").rglob("*") if p.is_file()]
    assert not PixelStream(dataset, 128).cached


def test_val_txt_read_in_one_pass_or_line_by_line_gives_the_same_classes(tmp_path):
    from requestflow.board.dataset import read_truth

    common = tmp_path / "common.txt"
    common.write_text("a.JPEG 0\n\nb.JPEG 999\n  c.JPEG\t12 \n")
    unusual = tmp_path / "unusual.txt"  # CRLF and a class with a leading zero: the line-by-line reading's
    unusual.write_text("a.JPEG 0\r\nb.JPEG 0999\r\n  c.JPEG\t12 \r\n")
    assert read_truth(common) == {"a.JPEG": "0", "b.JPEG": "999", "c.JPEG": "12"}
    assert {k: int(v) for k, v in read_truth(unusual).items()} == {"a.JPEG": 0, "b.JPEG": 999, "c.JPEG": 12}


def test_the_decoding_threads_are_nicer_than_the_consumer(images, monkeypatch):
    import threading

    from requestflow.board import image_stream

    seen = []

    def recording(path, resolution):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return np.zeros((resolution, resolution, 3), np.uint8)

    monkeypatch.setattr(image_stream, "preprocess_image", recording)
    list(image_stream.decoded(load_dataset(images), 8, workers=2, ahead=4))
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert set(seen) == {min(19, mine + image_stream.DECODER_NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the consumer's own unchanged
