"""The armcl backend's variants (issue #6): every convolution method, layout and CL tuner mode of the build on the
smallest model gives tf's top-1 predictions, and accuracy as a correctness check: a variant whose accuracy falls
more than 1 point below tf on the same weights is flagged in the scoreboard (a deliberately broken one: the weights
it is given have one layer corrupted, as a faulty weight conversion would).

Runs on this machine's PoCL through the OpenCL shim, on the machine's real ArmCL build (tests/armcl_real.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from requestflow.board import armcl_program
from requestflow.board.backends import armcl_backend
from requestflow.board.catalogue import ARMCL_VARIANT
from requestflow.board.runner import RunConfig, run
from requestflow.results.database import sqlalchemy_url
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.armcl_real import real_build
from tests.databases import throwaway_database

MODEL = "mobilenet-v1-0.25-128"
WEIGHTS = "mobilenet_v1_0.25_128_quant.tflite"  # dequantized to fp32 for tf and armcl
IMAGES = 20


@pytest.fixture(scope="module")
def build():
    from requestflow.board.opencl_probe import opencl

    found, _ = real_build()
    if not opencl().get("available"):
        message = "no OpenCL device (dev.sh installs pocl-opencl-icd)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    armcl_program.compile_program(found)
    return found


_DOCUMENTS: dict = {}


def accuracy(models_dir, backend: str, variant: dict | None = None, build=None, limit: int = IMAGES) -> dict:
    key = (backend, tuple(sorted((variant or {}).items())), limit)
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = run(RunConfig(model=MODEL, backend=backend, mode="accuracy", progress=False, limit=limit,
                                        weights=[str(models_dir / WEIGHTS)], variant=variant,
                                        armcl_build=str(build) if build else None))
    return _DOCUMENTS[key]


def top1(document: dict) -> list[int]:
    return [p["top5"][0][0] for p in document["predictions"]]


VARIANTS = [{"layout": layout, "conv_method": method} for layout in ARMCL_VARIANT["layout"]
            for method in ARMCL_VARIANT["conv_method"]]
TUNERS = [{"tuner": tuner} for tuner in ARMCL_VARIANT["tuner"][1:]]


@pytest.mark.parametrize("variant", VARIANTS + TUNERS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_every_variant_gives_tfs_top1_predictions(models_dir, build, variant):
    document = accuracy(models_dir, "armcl", variant, build)
    assert document["status"] == "ok", document.get("error")
    backend = document["context"]["backend"]
    assert all(backend["variant"][k] == v for k, v in variant.items())
    reference = accuracy(models_dir, "tf")
    assert reference["status"] == "ok"
    assert top1(document) == top1(reference)
    assert abs(document["accuracy"]["top1"] - reference["accuracy"]["top1"]) < 1e-9


def test_a_broken_variant_is_flagged_beside_tf_and_a_good_one_is_not(models_dir, build, monkeypatch):
    """Three accuracy points on the same weights and images: tf, armcl, and armcl given canonical weights whose
    pw7 layer is noise (same source weights, so the same weights sha256: only the variant's computation is wrong).
    In the scoreboard tf is the reference, the good variant 'ok', the broken one 'FLAGGED' with a caveat."""
    limit = 100
    tf = accuracy(models_dir, "tf", limit=limit)
    good = accuracy(models_dir, "armcl", {}, build, limit=limit)
    real_folder = armcl_backend.canonical_folder

    def corrupted(weights):
        folder = real_folder(weights)
        broken = folder.with_name(folder.name + "-broken")
        if not broken.is_dir():
            tensors = dict(weights.tensors)
            rng = np.random.default_rng(7)
            tensors["pw7.weights"] = rng.normal(0, 0.1, tensors["pw7.weights"].shape).astype(np.float32)
            type(weights)(weights.model, weights.classes, tensors, weights.source).save(broken)
        return broken

    monkeypatch.setattr(armcl_backend, "canonical_folder", corrupted)
    broken = run(RunConfig(model=MODEL, backend="armcl", mode="accuracy", progress=False, limit=limit,
                           weights=[str(models_dir / WEIGHTS)], armcl_build=str(build)))
    assert broken["status"] == "ok"
    assert broken["context"]["weights"]["sha256"] == tf["context"]["weights"]["sha256"]
    assert broken["accuracy"]["top1"] < tf["accuracy"]["top1"] - 0.01  # the corruption did break it
    with throwaway_database() as url:
        from sqlalchemy import create_engine

        engine = create_engine(sqlalchemy_url(url))
        try:
            load_documents(engine, [("tf", tf), ("armcl", good)], board="lab")
            load_documents(engine, [("broken", broken)], board="lab-broken")  # same variant: another board
            columns, rows = read_only(engine, "SELECT board, backend, top1, reference_top1, accuracy_delta, "
                                              "accuracy_check, caveats FROM scoreboard ORDER BY board, backend")
        finally:
            engine.dispose()
    rows = {(r[0], r[1]): dict(zip(columns, r, strict=True)) for r in rows}
    reference = tf["accuracy"]["top1"]
    assert rows["lab", "tf"]["accuracy_check"] == "reference"
    ok = rows["lab", "armcl"]
    assert ok["accuracy_check"] == "ok" and ok["reference_top1"] == reference
    assert abs(ok["accuracy_delta"]) <= 0.01
    flagged = rows["lab-broken", "armcl"]
    assert flagged["accuracy_check"] == "FLAGGED" and flagged["reference_top1"] == reference
    assert flagged["accuracy_delta"] == pytest.approx(broken["accuracy"]["top1"] - reference)
    below = round((reference - broken["accuracy"]["top1"]) * 100, 1)
    assert f"accuracy {below} points below tf on the same weights" in " ".join(flagged["caveats"])
    assert not any("below tf" in c for c in ok["caveats"])
