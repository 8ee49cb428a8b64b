"""What a sweep's points need from the controller (``operators.point_data``): weights resolved as the runner
resolves them (data folder, download cache, download, else random for performance), images, refusals by name,
and what provisioning ships to the board.

Downloads come from a local ``http.server`` through ``$REQUESTFLOW_WEIGHTS_MIRROR`` (no internet here); "no
network" is a proxy on a port where nothing listens, so a download is really tried and really refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from operators import point_data
from operators.board_hook import LocalBoard
from operators.data_push import push_data
from operators.run_point import runner_command
from requestflow.board.download import cached_download_path
from requestflow.board.files import cache_dir, sha256_file
from requestflow.errors import UserError
from tests.served import http_folder

MODEL = "mobilenet-v1-0.25-128"
KERAS = "mobilenet-v1-0.25-224"  # the shared data's .h5 is the keras release's official file
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_224_tf.h5"
NO_NETWORK = "http://127.0.0.1:9"  # the discard port: nothing listens, every connection is refused


@contextmanager
def fresh_urlopen():
    """urlopen's default opener reads the proxy settings once, when first used, and is kept for the process: a
    fresh one inside the block sees this test's proxies, and another after it sees the restored ones (else the
    refusing proxy stayed for every later test: the api-server health checks of test_scheduler and others failed
    in the CI of 343d27a)."""
    urllib.request.install_opener(None)
    try:
        yield
    finally:
        urllib.request.install_opener(None)


@pytest.fixture
def own_state(tmp_path, monkeypatch):
    """Own cache and lock, no data folder anywhere (``REQUESTFLOW_DATA`` names an empty one), no network."""
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REQUESTFLOW_WEIGHTS_LOCK", str(tmp_path / "weights.lock.json"))
    monkeypatch.delenv("REQUESTFLOW_OFFLINE", raising=False)
    monkeypatch.delenv("REQUESTFLOW_WEIGHTS_MIRROR", raising=False)
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(proxy, NO_NETWORK)
    monkeypatch.setenv("no_proxy", "")
    empty = tmp_path / "no-data"
    empty.mkdir()
    with fresh_urlopen():
        yield empty


@pytest.fixture
def mirror(tmp_path, monkeypatch, models_dir):
    """A local mirror serving the official keras file of 0.25 x 224 (the shared data's copy): the paths requested."""
    root = tmp_path / "mirror"
    root.mkdir()
    shutil.copyfile(models_dir / "mobilenet_v1_0.25_224.h5", root / "mobilenet_2_5_224_tf.h5")
    with http_folder(root) as (url, requests):
        monkeypatch.setenv("REQUESTFLOW_WEIGHTS_MIRROR", url)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with fresh_urlopen():
            yield requests


def perf(model: str = MODEL, **extra) -> dict:
    return {"model": model, "backend": "tflite", "mode": "performance", "repetitions": 2, "warmup": 1, **extra}


def accuracy(model: str = MODEL, **extra) -> dict:
    return {"model": model, "backend": "tflite", "mode": "accuracy", "limit": 5, **extra}


class TestWithTheSharedDataFolder:
    """Everything as before: the data folder's weights, nothing pinned, nothing downloaded."""

    def test_points_are_unchanged_and_ship_the_data_folders_files(self, data_dir):
        points = [perf(precision="uint8"), accuracy()]
        prepared = point_data.prepare(points, data_dir)
        assert (prepared.points, prepared.refused, prepared.notes) == (points, [], [])
        shipment = point_data.files_for_points(prepared.points, data_dir)
        first = sorted(p.name for p in (data_dir / "imagenet/val").glob("ILSVRC2012_val_*.JPEG"))[:5]
        assert [r for _p, r in shipment.data] == sorted(
            ["models/mobilenet_v1_0.25_128_quant.tflite", "imagenet/val.txt", "imagenet/synset_words.txt",
             *(f"imagenet/val/{n}" for n in first)])
        assert shipment.cache == []

    def test_weights_in_two_pieces_and_float_weights_for_tf(self, data_dir):
        shipment = point_data.files_for_points([perf("mobilenet-v1-1.0-224"), perf(KERAS, backend="tf")], data_dir)
        assert [r for _p, r in shipment.data] == [
            "models/mobilenet_quant_v1_224_head_layers.tflite", "models/mobilenet_v1_0.25_224.h5",
            "models/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"]

    def test_points_on_random_weights_need_no_file(self, data_dir):
        random = [perf(m, backend=b, weights="random")
                  for m in ("mobilenet-v1-0.75-160", MODEL) for b in ("tflite", "tf")]
        assert point_data.files_for_points(random, data_dir).data == []
        assert [r for _p, r in point_data.files_for_points([*random, perf()], data_dir).data] == [
            "models/mobilenet_v1_0.25_128_quant.tflite"]


class TestWithoutDataOrNetwork:
    def test_performance_points_fall_back_to_random_weights_saying_why(self, own_state):
        prepared = point_data.prepare([perf(), perf(KERAS, precision="fp32")], None)
        assert [p["weights"] for p in prepared.points] == ["random", "random"]
        assert prepared.refused == []
        assert len(prepared.notes) == 2
        assert "mobilenet-v1-0.25-128 tflite performance: no real weights (cannot download" in prepared.notes[0]
        assert "Connection refused" in prepared.notes[0] and "RANDOMLY INITIALISED" in prepared.notes[0]

    def test_accuracy_points_are_refused_by_name_and_the_rest_runs(self, own_state):
        prepared = point_data.prepare([perf(), accuracy(), accuracy(KERAS)], None)
        assert [p["model"] for p in prepared.points] == [MODEL]
        assert [(p["model"], p["mode"]) for p, _why in prepared.refused] == [(MODEL, "accuracy"), (KERAS, "accuracy")]
        assert all(why == point_data.IMAGES_HINT for _p, why in prepared.refused)
        assert "requestflow dataset import" in point_data.IMAGES_HINT

    def test_accuracy_with_images_but_no_weights_is_refused_for_the_weights(self, own_state, data_dir, tmp_path):
        images_only = tmp_path / "images-only"
        shutil.copytree(data_dir / "imagenet", images_only / "imagenet",
                        ignore=lambda folder, names: [n for n in names if n.endswith(".JPEG")][10:])
        prepared = point_data.prepare([accuracy("mobilenet-v1-0.75-160")], images_only)
        ((point, why),) = prepared.refused
        assert point["model"] == "mobilenet-v1-0.75-160"
        assert why.startswith("accuracy needs real weights: no weights for mobilenet-v1-0.75-160")

    def test_explicitly_random_points_are_kept_without_a_note(self, own_state):
        prepared = point_data.prepare([perf(weights="random")], None)
        assert (prepared.points, prepared.notes) == ([perf(weights="random")], [])

    def test_shipping_refuses_what_cannot_be_had_naming_it(self, own_state):
        with pytest.raises(UserError, match=r"mobilenet-v1-0\.25-128 tflite performance: no weights for"):
            point_data.files_for_points([perf()], None)
        with pytest.raises(UserError, match=r"tflite accuracy: accuracy needs real weights, not random ones"):
            point_data.files_for_points([accuracy(weights="random")], None)


class TestDownloadedOnTheController:
    def test_the_release_is_pinned_and_its_file_goes_to_the_boards_cache(self, own_state, mirror, models_dir):
        prepared = point_data.prepare([perf(KERAS)], own_state)
        assert prepared.points == [perf(KERAS, release="keras")] and prepared.notes == []
        assert mirror == ["/mobilenet_v1_0.25_224.tgz", "/mobilenet_2_5_224_tf.h5"]  # release order, first missing
        shipment = point_data.files_for_points(prepared.points, own_state)
        archive = cached_download_path(KERAS_URL)
        assert shipment.data == []
        assert shipment.cache == [(archive, archive.relative_to(cache_dir()).as_posix())]
        assert sha256_file(archive) == sha256_file(models_dir / "mobilenet_v1_0.25_224.h5")
        point_data.prepare([perf(KERAS)], own_state)
        assert len(mirror) == 2  # the second sweep takes it from the cache

    def test_the_runner_on_the_board_uses_exactly_what_was_shipped(self, own_state, mirror, tmp_path, monkeypatch):
        """The shipment pushed to a board's work dir, then the point's own command line there (``--offline``): the
        runner resolves the shipped file from its cache, with the official URL and the release pinned."""
        (point,) = point_data.prepare([perf(KERAS)], own_state).points
        shipment = point_data.files_for_points([point], own_state)
        board = LocalBoard(work_dir=str(tmp_path / "board"))
        data = push_data(board, shipment.data, log=lambda line: None, cache_files=shipment.cache)
        work = str(tmp_path / "board")
        assert Path(work, "cache", shipment.cache[0][1]).is_file()
        env = {**os.environ, "REQUESTFLOW_CACHE": f"{work}/cache", "REQUESTFLOW_DATA": data,
               "REQUESTFLOW_WEIGHTS_LOCK": f"{work}/weights.lock.json", "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("REQUESTFLOW_WEIGHTS_MIRROR")
        command = runner_command(sys.executable, point, out=str(tmp_path / "result.json"))
        result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        weights = json.loads((tmp_path / "result.json").read_text())["context"]["weights"]
        assert (weights["origin"], weights["release"], weights["url"], weights["random"]) == \
            ("cache", "keras", KERAS_URL, False)
        assert len(mirror) == 2  # nothing fetched by the board


def test_user_errors_fail_the_task_at_once_and_other_errors_are_left_to_retries():
    from airflow.sdk.exceptions import AirflowFailException

    from operators.results_hook import user_errors_are_final

    with pytest.raises(AirflowFailException, match="^no data folder here$"):
        with user_errors_are_final():
            raise UserError("no data folder here")
    with pytest.raises(ConnectionError):
        with user_errors_are_final():
            raise ConnectionError("board unreachable")
