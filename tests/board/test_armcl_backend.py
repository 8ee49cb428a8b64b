"""The ``armcl`` backend (issue #6): requestflow's native MobileNets-v1 program on ArmCL 24.11's graph API, on the
CL target of this machine's only OpenCL device, PoCL on the CPU, through the OpenCL forwarding shim (ADR 0006).

The ArmCL build is the machine's (tests/board/test_armcl_cl.py builds it when cold; ``$REQUESTFLOW_ARMCL_BUILD`` names
another). Accuracy: armcl and tf on the same canonical fp32 weights (the Keras .h5, and weights dequantized from a
quantized .tflite) must give the same top-1 on >= 99% of the shared images and accuracies within 0.5 point.
``$REQUESTFLOW_ARMCL_TEST_IMAGES`` lowers the image count for a quick local run; CI uses all 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from requestflow.board import armcl_program
from requestflow.board.backends.armcl_backend import parse_variant
from requestflow.board.catalogue import variant_label
from requestflow.board.runner import RunConfig, run
from requestflow.board.schema import validate_document
from requestflow.errors import UserError
from requestflow.results.identity import point_id
from tests.armcl_real import real_build

IMAGES = int(os.environ.get("REQUESTFLOW_ARMCL_TEST_IMAGES", "500"))
CASES = {"h5 0.25_224": ("mobilenet-v1-0.25-224", "mobilenet_v1_0.25_224.h5"),
         "dequantized 0.25_128": ("mobilenet-v1-0.25-128", "mobilenet_v1_0.25_128_quant.tflite")}


@pytest.fixture(scope="module")
def build() -> Path:
    """The machine's real ArmCL build (built when cold), named to the backend by $REQUESTFLOW_ARMCL_BUILD."""
    from requestflow.board.opencl_probe import opencl

    found, _ = real_build()
    saved = os.environ.get("REQUESTFLOW_ARMCL_BUILD")
    os.environ["REQUESTFLOW_ARMCL_BUILD"] = str(found)
    assert armcl_program.find_build() == found
    if not opencl().get("available"):
        message = "no OpenCL device (dev.sh installs pocl-opencl-icd)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    yield found
    os.environ.pop("REQUESTFLOW_ARMCL_BUILD") if saved is None else os.environ.__setitem__("REQUESTFLOW_ARMCL_BUILD",
                                                                                          saved)


@pytest.fixture(scope="module")
def program(build) -> dict:
    return armcl_program.compile_program(build)


_RUNS: dict = {}


def accuracy(models_dir, model_id: str, file: str, backend: str, limit: int | None = IMAGES,
             variant: str | None = None) -> dict:
    key = (model_id, file, backend, limit, variant)
    if key not in _RUNS:
        document = run(RunConfig(model=model_id, backend=backend, mode="accuracy", progress=False, variant=variant,
                                 weights=[str(models_dir / file)], limit=None if limit == 500 else limit))
        validate_document(document)
        assert document["status"] == "ok", document.get("error")
        _RUNS[key] = document
    return _RUNS[key]


def top1(document: dict) -> np.ndarray:
    return np.array([p["top5"][0][0] for p in document["predictions"]])


class TestTheProgram:
    def test_is_compiled_once_per_build_and_source_then_reused(self, build, program):
        again = armcl_program.compile_program(build)
        assert again["reused"] is True and again["path"] == program["path"]
        assert again["sha256"] == armcl_program.source_sha256()
        assert Path(program["path"]).parent.name == program["sha256"][:16]
        assert Path(program["path"]).is_file() and os.access(program["path"], os.X_OK)

    def test_refuses_bad_arguments_with_its_own_error(self, program):
        result = subprocess.run([program["path"], "--weights", "/nonexistent", "--layout", "NWHC"],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert result.returncode == 2 and result.stdout.startswith("ERROR --layout NHWC or NCHW")


class TestTheVariant:
    def test_defaults_and_choices(self):
        assert parse_variant(None) == {"target": "CL", "layout": "NHWC", "conv_method": "DEFAULT", "tuner": "NONE"}
        assert parse_variant('{"layout": "nchw", "tuner": "RAPID"}')["layout"] == "NCHW"
        assert parse_variant("layout=nchw, tuner=RAPID") == parse_variant({"layout": "NCHW", "tuner": "rapid"})
        assert variant_label(parse_variant("conv_method=GEMM")) == "CL/NHWC/GEMM/NONE"

    @pytest.mark.parametrize("text, message", [('{"layout": "NWHC"}', "layout 'NWHC'"),
                                               ('{"colour": 1}', "unknown key 'colour'"),
                                               ("[1]", "JSON object"), ("{", "not JSON"),
                                               ("layout", "'layout' is not key=value"),
                                               ("tuner=FAST", "tuner 'FAST'; known: NONE, RAPID")])
    def test_bad_input_is_refused(self, text, message):
        with pytest.raises(UserError, match=message):
            parse_variant(text)

    def test_the_runner_refuses_a_bad_variant_before_running(self):
        with pytest.raises(UserError, match="--variant: conv_method 'FFT'"):
            RunConfig(model="mobilenet-v1-0.25-128", backend="armcl", variant="conv_method=FFT").validate()
        with pytest.raises(UserError, match="the tflite backend has no variants"):
            RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", variant="layout=NCHW").validate()
        with pytest.raises(UserError, match="--armcl-build is for the armcl backend"):
            RunConfig(model="mobilenet-v1-0.25-128", backend="tf", armcl_build="/tmp").validate()

    def test_neon_is_refused_on_a_build_without_it(self, build, models_dir):
        with pytest.raises(UserError, match="target NEON, but ArmCL build .* has neon=0"):
            run(RunConfig(model="mobilenet-v1-0.25-128", backend="armcl", weights=["random"], repetitions=1,
                          warmup=0, progress=False, variant={"target": "NEON"}))

    def test_a_build_folder_that_is_not_a_build_is_refused(self, build, tmp_path):
        with pytest.raises(UserError, match="is not a complete ArmCL build"):
            run(RunConfig(model="mobilenet-v1-0.25-128", backend="armcl", weights=["random"], repetitions=1,
                          warmup=0, progress=False, armcl_build=str(tmp_path)))


@pytest.mark.parametrize("case", CASES)
def test_armcl_on_cl_agrees_with_tf_on_the_same_fp32_weights(models_dir, program, case):
    model_id, file = CASES[case]
    armcl, tf = accuracy(models_dir, model_id, file, "armcl"), accuracy(models_dir, model_id, file, "tf")
    assert armcl["context"]["weights"]["sha256"] == tf["context"]["weights"]["sha256"]
    assert armcl["context"]["precision"] == tf["context"]["precision"] == "fp32"
    n = armcl["accuracy"]["n"]
    assert n == tf["accuracy"]["n"] == min(IMAGES, 500)
    same = int((top1(armcl) == top1(tf)).sum())
    assert same >= 0.99 * n, f"top-1 identical on {same}/{n} images"
    assert abs(armcl["accuracy"]["top1"] - tf["accuracy"]["top1"]) <= 0.005
    assert abs(armcl["accuracy"]["top5"] - tf["accuracy"]["top5"]) <= 0.005
    shim = armcl["context"]["backend"]["opencl_shim"]
    assert shim["used"] is True and "PoCL" in shim["device"]["version"]


def test_a_performance_run_through_the_cli_gives_a_valid_document(models_dir, program, tmp_path):
    out = tmp_path / "armcl.json"
    env = {k: v for k, v in os.environ.items() if k != "REQUESTFLOW_ARMCL_BUILD"}  # --armcl-build names it
    cli = [sys.executable, "-m", "requestflow.cli"]
    result = subprocess.run([*cli, "run", "--model", "mobilenet-v1-0.25-224", "--backend", "armcl", "--weights",
                             str(models_dir / "mobilenet_v1_0.25_224.h5"), "--repetitions", "5", "--warmup", "2",
                             "--variant", "layout=NHWC,conv_method=GEMM", "--armcl-build", program["build"],
                             "--quiet", "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    checked = subprocess.run([*cli, "validate", str(out)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    document = json.loads(out.read_text())
    assert document["status"] == "ok"
    backend = document["context"]["backend"]
    assert backend["name"] == "armcl" and backend["library"] == "arm_compute" and backend["version"] == "24.11"
    assert backend["variant"]["layout"] == "NHWC" and backend["variant"]["conv_method"] == "GEMM"
    assert backend["variant"]["target"] == "CL" and backend["variant"]["tuner"] == "NONE"
    assert backend["opencl_shim"]["used"] is True and "PoCL" in backend["opencl_shim"]["device"]["version"]
    assert backend["variant"]["opencl_shim"] == backend["opencl_shim"]["sha256"]
    assert "not Mali GPU timings" in backend["device_note"]
    assert backend["build"]["key"] == program["build_key"]
    # the shim's counters, read after the program exited: every enqueue went through it
    counts = backend["opencl_shim"]["counts"]
    assert counts["processes"] == 1 and counts["loaded"] is True
    assert counts["enqueues"] > 0 and 0 < counts["rewritten_enqueues"] <= counts["enqueues"]
    performance = document["performance"]
    assert performance["n"] == 5 and len(performance["samples"]) == 5 and performance["min"] > 0
    assert "inside the native program" in performance["timed_region"]


def test_layouts_are_different_points_with_the_same_predictions(models_dir, program):
    model_id, file = CASES["h5 0.25_224"]
    nhwc = accuracy(models_dir, model_id, file, "armcl", limit=8, variant='{"layout": "NHWC"}')
    nchw = accuracy(models_dir, model_id, file, "armcl", limit=8, variant='{"layout": "NCHW"}')
    assert nchw["context"]["backend"]["variant"]["layout"] == "NCHW"
    assert point_id("board", nhwc["context"]) != point_id("board", nchw["context"])
    assert (top1(nhwc) == top1(nchw)).all()
    scores = [np.array([[c[1] for c in p["top5"]] for p in d["predictions"]]) for d in (nhwc, nchw)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)


def test_a_point_the_program_refuses_is_stored_as_failed_with_its_reason(models_dir, program, tmp_path):
    methods = tmp_path / "methods.txt"
    methods.write_text("# layer method\npw1 WINOGRAD\n")
    document = run(RunConfig(model="mobilenet-v1-0.25-128", backend="armcl", weights=["random"], repetitions=1,
                             warmup=0, progress=False, variant={"conv_methods_file": str(methods)}))
    validate_document(document)
    assert document["status"] == "failed"
    assert "layer pw1 does not allow WINOGRAD (1x1 stride 1)" in document["error"]["message"]


def test_batches_of_several_images_give_each_image_its_own_scores(models_dir, program):
    model_id, file = CASES["dequantized 0.25_128"]
    single = accuracy(models_dir, model_id, file, "armcl", limit=6)
    document = run(RunConfig(model=model_id, backend="armcl", mode="accuracy", progress=False, batch_size=4,
                             weights=[str(models_dir / file)], limit=6))
    assert document["status"] == "ok", document.get("error")
    batched, alone = (np.array([p["top5"] for p in d["predictions"]]) for d in (document, single))
    assert batched.shape == alone.shape == (6, 5, 2)
    assert (batched[:, :, 0] == alone[:, :, 0]).all()  # the same classes, in the same order
    np.testing.assert_allclose(batched[:, :, 1], alone[:, :, 1], atol=1e-5)


def test_the_cl_tuner_tunes_before_timing_and_its_file_is_reused(models_dir, program):
    weights = [str(models_dir / CASES["dequantized 0.25_128"][1])]

    def tuned():
        document = run(RunConfig(model="mobilenet-v1-0.25-128", backend="armcl", weights=weights, repetitions=3,
                                 warmup=1, progress=False, variant="tuner=RAPID"))
        assert document["status"] == "ok", document.get("error")
        backend = document["context"]["backend"]
        return backend, Path(backend["tuner_file"]["path"]).read_bytes()

    from requestflow.board.files import cache_dir

    for earlier in cache_dir("armcl-tuner").glob("*-RAPID-*"):  # another module's RAPID runs (test_armcl_variants)
        earlier.unlink()
    (first, tuned_once), (second, tuned_twice) = tuned(), tuned()
    assert first["variant"]["tuner"] == "RAPID"
    assert first["tuner_file"]["reused"] is False and second["tuner_file"]["reused"] is True
    assert first["tuner_file"]["path"] == second["tuner_file"]["path"]
    assert "-RAPID-" in Path(first["tuner_file"]["path"]).name  # one file per tuner mode
    # the first run tuned every kernel (after its "lws" header, one line each: the kernel's name and configuration,
    # then the local size chosen); the second found them all in the file and tuned nothing new
    header, *entries = tuned_once.decode().splitlines()
    assert header == "lws" and len(entries) > 20 and all(line.count(";") == 3 for line in entries)
    assert sorted(tuned_twice.decode().splitlines()) == sorted(tuned_once.decode().splitlines())  # written unordered
