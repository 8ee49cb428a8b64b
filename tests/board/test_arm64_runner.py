"""requestflow's runner as aarch64 code (issue #15): Debian bookworm's arm64 CPython 3.11 under
``qemu-aarch64-static -L``, with the runner's aarch64 wheels (ai-edge-litert 1.4.0, numpy, pillow, h5py), runs
tflite accuracy and gives the x86 runner's predictions on the same images; its results say they were emulated,
detected with no setting at all (its Python is aarch64 code, /proc/cpuinfo the x86 host's), and its latencies
are EMULATED.

The userland and the wheels are the machine's (``operators.arm64_runner``, ``$REQUESTFLOW_ARM64_CACHE``, default
``~/.cache/requestflow/arm64``): cold about 10 s here, warm under a second. requestflow itself comes from this
checkout (``PYTHONPATH``): provisioning a board from the wheelhouse is the farm board's business, not yet done.
Needs root (mmdebstrap --mode=root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from requestflow.board.emulation import ENV, SETTING, elf_arch
from requestflow.board.runner import RunConfig, run
from requestflow.board.schema import validate_document

ROOT = Path(__file__).resolve().parents[2]
ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
IMAGES = int(os.environ.get("REQUESTFLOW_ARM64_TEST_IMAGES", "20"))
MODEL, WEIGHTS = "mobilenet-v1-0.25-128", "mobilenet_v1_0.25_128_quant.tflite"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the arm64 userland needs root (mmdebstrap --mode=root)")


@pytest.fixture(scope="module")
def arm64():
    from operators import arm64_runner as arm64

    absent = [tool for tool in ("mmdebstrap", "qemu-aarch64-static") if shutil.which(tool) is None]
    if absent:  # dev.sh test installs them: when root, their absence is a failure, not a skip
        pytest.fail(f"{', '.join(absent)} not installed (./dev.sh test installs qemu-user-static and mmdebstrap)")
    return arm64


@pytest.fixture(scope="module")
def userland(arm64):
    return arm64.python_userland(ARM64_CACHE, log=lambda line: None)


@pytest.fixture(scope="module")
def site(arm64):
    return arm64.runner_site(ARM64_CACHE, log=lambda line: None)


def aarch64_runner(userland, site, *args: str, cache: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m requestflow.cli ARGS`` by the arm64 Python under qemu-user, with no emulation setting."""
    env = {key: value for key, value in os.environ.items() if key not in (ENV, SETTING)}
    env.update(PYTHONPATH=f"{site}:{ROOT}", REQUESTFLOW_CACHE=str(cache), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([*userland.emulator(), str(userland.python), "-m", "requestflow.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_python_is_arm64_code_and_says_so_under_qemu(userland, site, tmp_path):
    assert elf_arch(userland.python) == "aarch64"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([*userland.emulator(), str(userland.python), "-c",
                             "import platform, numpy, ai_edge_litert; print(platform.machine(), numpy.__version__)"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    machine, _ = result.stdout.split()
    assert machine == "aarch64"
    wheels = json.loads((site.parent / "wheels.json").read_text())
    assert any(name.startswith("ai_edge_litert-1.4.0-cp311") and "aarch64" in name for name in wheels)


def test_tflite_accuracy_on_arm64_equals_x86s_and_is_labelled_emulated(userland, site, models_dir, tmp_path):
    out = tmp_path / "aarch64.json"
    result = aarch64_runner(userland, site, "run", "--model", MODEL, "--backend", "tflite", "--mode", "accuracy",
                            "--limit", str(IMAGES), "--weights", str(models_dir / WEIGHTS), "--quiet", "--out",
                            str(out), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    arm = json.loads(out.read_text())
    validate_document(arm)
    x86 = run(RunConfig(model=MODEL, backend="tflite", mode="accuracy", limit=IMAGES, progress=False,
                        weights=[str(models_dir / WEIGHTS)]))
    assert arm["status"] == x86["status"] == "ok"
    assert arm["context"]["backend"]["version"] == "1.4.0"  # the aarch64 pin, not x86's LiteRT
    assert arm["accuracy"]["n"] == x86["accuracy"]["n"] == IMAGES
    assert [p["top5"] for p in arm["predictions"]] == [p["top5"] for p in x86["predictions"]]
    machine = arm["machine"]
    assert machine["arch"] == "aarch64" and x86["machine"]["arch"] == "x86_64"
    emulated = machine["emulated"]
    assert emulated["python_arch"] == "aarch64" and emulated["cpu_arch"] == "x86_64"
    assert emulated["evidence"] == ["the runner's Python is aarch64 code and /proc/cpuinfo describes an x86_64 CPU"]
    assert x86["machine"]["emulated"] is None


def test_an_arm64_performance_run_is_emulated_never_a_measurement(userland, site, models_dir, tmp_path):
    out = tmp_path / "performance.json"
    result = aarch64_runner(userland, site, "run", "--model", MODEL, "--backend", "tflite", "--repetitions", "6",
                            "--warmup", "1", "--weights", str(models_dir / WEIGHTS), "--quiet", "--out", str(out),
                            cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(out.read_text())
    validate_document(document)
    verdict = document["performance"]["quality"]
    assert verdict["verdict"] == "EMULATED" and verdict["reasons"][0].startswith("emulated (unknown")


def test_a_damaged_userland_or_wheel_is_made_again(arm64, tmp_path):
    lines = []
    userland = arm64.python_userland(tmp_path, log=lines.append)
    python = userland.python.resolve()
    data = bytearray(python.read_bytes())
    data[len(data) // 2] ^= 0xFF
    python.write_bytes(bytes(data))
    again = arm64.python_userland(tmp_path, log=lines.append)
    assert again.reused is False and any("is damaged (sha256 differs): making it again" in line for line in lines)
    assert elf_arch(again.python) == "aarch64"
    site = arm64.runner_site(tmp_path, log=lines.append)
    wheel = next((site.parent / "wheels").glob("numpy-*.whl"))
    wheel.write_bytes(b"not a wheel")
    assert arm64.runner_site(tmp_path, log=lines.append) == site
    assert any("numpy-" in line and "downloading again" in line for line in lines), lines
    recorded = json.loads((site.parent / "wheels.json").read_text())
    from requestflow.board.files import sha256_file

    assert sha256_file(wheel) == recorded[wheel.name]


def test_tensorflow_2_20_on_arm64_gives_x86_tfs_top1(arm64, userland, site, models_dir, tmp_path):
    """tf itself as aarch64 code (issue #15 asked whether it can): TensorFlow 2.20.0's aarch64 wheel (the newest for
    CPython 3.11) imports in about 13 s under qemu-user here and classifies like x86's TensorFlow 2.21."""
    images = 8
    with_tf = arm64.runner_site(ARM64_CACHE, tensorflow=True, log=lambda line: None)
    out = tmp_path / "tf.json"
    result = aarch64_runner(userland, with_tf, "run", "--model", "mobilenet-v1-0.25-224", "--backend", "tf", "--mode",
                            "accuracy", "--limit", str(images), "--weights",
                            str(models_dir / "mobilenet_v1_0.25_224.h5"), "--quiet", "--out", str(out),
                            cache=tmp_path / "cache", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    arm = json.loads(out.read_text())
    validate_document(arm)
    x86 = run(RunConfig(model="mobilenet-v1-0.25-224", backend="tf", mode="accuracy", limit=images, progress=False,
                        weights=[str(models_dir / "mobilenet_v1_0.25_224.h5")]))
    assert arm["context"]["backend"]["version"] == "2.20.0" and arm["machine"]["arch"] == "aarch64"
    assert arm["machine"]["emulated"]["python_arch"] == "aarch64"
    top = [[p["top5"][0] for p in d["predictions"]] for d in (arm, x86)]
    assert [c for c, _ in top[0]] == [c for c, _ in top[1]]
    assert max(abs(a[1] - b[1]) for a, b in zip(*top, strict=True)) < 1e-4
