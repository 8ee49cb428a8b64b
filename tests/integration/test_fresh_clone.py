"""The README's main command as a newcomer runs it: ``./dev.sh demo`` in a fresh copy of this checkout.

The copy (the files git tracks, plus new files git does not ignore: what a clone of this working tree holds) sits
in an empty temporary folder, with no ``shared/data`` beside or above it, and runs with a HOME of its own: no
state, no caches, no Airflow home, no embedded database, no weights lock entries from earlier runs. It reuses this
test run's virtual environment (``REQUESTFLOW_VENV``; installing again would take minutes and prove nothing about
the demo), imports its own code (``PYTHONPATH``), and has no network: every connection goes to a proxy port where
nothing listens, so downloads are really tried and really refused.

Offline, the demo classifies nothing (no real weights; one line says why), sweeps performance on random weights
(labelled ``random_weights`` in the store) and prints how to add accuracy images; with a local mirror serving the
official weight file (``$REQUESTFLOW_WEIGHTS_MIRROR``), it downloads, verifies and uses the real weights.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.served import http_folder

ROOT = Path(__file__).resolve().parents[2]
NO_NETWORK = "http://127.0.0.1:9"  # the discard port: nothing listens
HINT = "accuracy needs ImageNet validation images: requestflow dataset import ILSVRC2012_img_val.tar"


def copy_checkout(target: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of it
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


class Newcomer:
    """A fresh copy of the checkout and a HOME of its own under an empty folder; ``run`` runs a command there."""

    def __init__(self, base: Path, extra_env: dict[str, str] | None = None) -> None:
        assert not any((folder / "shared").exists() for folder in (base, *base.parents))
        self.clone = copy_checkout(base / "requestflow")
        self.home = base / "home"
        self.home.mkdir()
        self.env = {"PATH": os.environ["PATH"], "HOME": str(self.home), "LANG": "C.UTF-8", "CI": "true",
                    "REQUESTFLOW_VENV": sys.prefix, "PYTHONPATH": str(self.clone),
                    "http_proxy": NO_NETWORK, "https_proxy": NO_NETWORK, "HTTP_PROXY": NO_NETWORK,
                    "HTTPS_PROXY": NO_NETWORK, "no_proxy": "", **(extra_env or {})}

    def run(self, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=self.clone, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def sql(self, query: str) -> str:
        result = self.run(f"{sys.prefix}/bin/requestflow", "sql", query, "--format", "csv")
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        self.run(f"{sys.prefix}/bin/requestflow", "db", "stop", timeout=120)


@pytest.fixture
def newcomer(tmp_path_factory):
    made = []

    def make(extra_env=None) -> Newcomer:
        made.append(Newcomer(tmp_path_factory.mktemp("fresh"), extra_env))
        return made[-1]

    yield make
    for person in made:
        person.stop()


def assert_clean(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    return output


def test_offline_the_demo_sweeps_performance_on_random_weights_and_says_how_to_add_images(newcomer):
    person = newcomer()
    output = assert_clean(person.run("./dev.sh", "demo"))
    assert "mobilenet-v1-0.25-224 tflite performance: no real weights (cannot download" in output
    assert "classify skipped: no real weights here" in output
    assert sum(HINT in line for line in output.splitlines()) == 1
    assert person.sql("SELECT model, backend, random_weights FROM scoreboard") == \
        "model,backend,random_weights\nmobilenet-v1-0.25-224,tflite,True\n"
    weights_lock = (person.clone / "requestflow/board/weights.lock.json").read_text()
    assert weights_lock == (ROOT / "requestflow/board/weights.lock.json").read_text()  # nothing downloaded

    # asked for accuracy too: the accuracy point is refused by name before the board is touched, the rest runs
    sweep = person.run(f"{sys.prefix}/bin/requestflow", "sweep", "--models", "mobilenet-v1-0.25-128",
                       "--backends", "tflite", "--modes", "performance", "accuracy", "--repetitions", "5",
                       "--warmup", "1")
    output = sweep.stdout + sweep.stderr
    assert sweep.returncode == 1, output[-4000:]
    assert "REFUSED mobilenet-v1-0.25-128 tflite accuracy: accuracy needs ImageNet validation images" in output
    assert "FAILED mobilenet-v1-0.25-128 tflite accuracy: Refused: accuracy needs ImageNet" in output
    assert sweep.stderr.splitlines()[-1].startswith("requestflow: sweep ") and "FAILED" in sweep.stderr
    assert person.sql("SELECT model, random_weights, latency_median_s > 0 AS timed, top1 FROM scoreboard "
                      "WHERE model = 'mobilenet-v1-0.25-128'") == \
        "model,random_weights,timed,top1\nmobilenet-v1-0.25-128,True,True,\n"


def test_with_a_mirror_of_the_official_files_the_demo_uses_real_weights(newcomer, models_dir, tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    shutil.copyfile(models_dir / "mobilenet_v1_0.25_224.h5", served / "mobilenet_2_5_224_tf.h5")
    with http_folder(served) as (url, requests):
        person = newcomer({"REQUESTFLOW_WEIGHTS_MIRROR": url, "no_proxy": "127.0.0.1"})
        output = assert_clean(person.run("./dev.sh", "demo"))
    assert requests.count("/mobilenet_2_5_224_tf.h5") == 1  # downloaded once, then from the cache
    assert "grace_hopper.jpg" in output and '"class 652"' in output  # military uniform, among the top 5
    assert "RANDOMLY INITIALISED" not in output
    assert person.sql("SELECT model, backend, random_weights FROM scoreboard") == \
        "model,backend,random_weights\nmobilenet-v1-0.25-224,tflite,False\n"
    # the download was verified and recorded (trust on first use) in the copy's own lock
    assert "mobilenet_2_5_224_tf.h5" in (person.clone / "requestflow/board/weights.lock.json").read_text()
