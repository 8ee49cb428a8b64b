"""Accuracy against the shared data README's independent reference table, on the 500 real ImageNet images.

These catch a wrong label offset, a wrong crop or resize, or a broken importer: agreement between our own two
backends alone could not.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from requestflow.board.runner import RunConfig, run
from requestflow.board.schema import validate_document

QUANT_FILES = {
    "0.25_128_quant": ("mobilenet-v1-0.25-128", ["mobilenet_v1_0.25_128_quant.tflite"]),
    "0.25_160_quant": ("mobilenet-v1-0.25-160", ["mobilenet_v1_0.25_160_quant.tflite"]),
    "0.5_160_quant": ("mobilenet-v1-0.5-160", ["mobilenet_v1_0.5_160_quant.tflite"]),
    "0.5_192_quant": ("mobilenet-v1-0.5-192", ["mobilenet_v1_0.5_192_quant.tflite"]),
    "0.75_192_quant": ("mobilenet-v1-0.75-192", ["mobilenet_v1_0.75_192_quant.tflite"]),
}
H5 = ("mobilenet-v1-0.25-224", "mobilenet_v1_0.25_224.h5")


@pytest.fixture(scope="session")
def reference(data_dir) -> dict[str, tuple[float, float]]:
    """The README's table: model -> (top-1, top-5)."""
    table = {}
    for line in (data_dir / "README.md").read_text().splitlines():
        match = re.match(r"^\|\s*([0-9._]+(?:_quant)?)(?: float `\.h5`[^|]*)?\s*\|"
                         r"\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|$", line)
        if match:
            table[match.group(1)] = (float(match.group(2)), float(match.group(3)))
    assert set(QUANT_FILES) | {"0.25_224"} <= set(table), table
    return table


_RUNS: dict = {}


def accuracy_run(models_dir, model_id: str, backend: str, files: list[str] | None = None, weights=None) -> dict:
    """One accuracy run over the 500 images, memoised for the session."""
    key = (model_id, backend, tuple(files or ()), str(weights))
    if key not in _RUNS:
        paths = [str(weights)] if weights else [str(models_dir / f) for f in files]
        document = run(RunConfig(model=model_id, backend=backend, mode="accuracy", weights=paths, progress=False))
        validate_document(document)
        assert document["status"] == "ok", document.get("error")
        assert document["accuracy"]["n"] == 500
        _RUNS[key] = document
    return _RUNS[key]


def top1_classes(document: dict) -> np.ndarray:
    return np.array([p["top5"][0][0] for p in document["predictions"]])


@pytest.mark.parametrize("name", QUANT_FILES)
def test_tflite_on_each_quantized_model_matches_the_reference(models_dir, reference, name):
    model_id, files = QUANT_FILES[name]
    accuracy = accuracy_run(models_dir, model_id, "tflite", files)["accuracy"]
    assert accuracy["top1"] == pytest.approx(reference[name][0], abs=0.005)
    assert accuracy["top5"] == pytest.approx(reference[name][1], abs=0.005)


def test_tf_on_the_keras_h5_matches_the_reference(models_dir, reference):
    document = accuracy_run(models_dir, H5[0], "tf", [H5[1]])
    assert document["context"]["model"]["classes"] == 1000
    assert document["accuracy"]["top1"] == pytest.approx(reference["0.25_224"][0], abs=0.005)
    assert document["accuracy"]["top5"] == pytest.approx(reference["0.25_224"][1], abs=0.005)


@pytest.mark.parametrize("name", QUANT_FILES)
def test_tf_on_weights_dequantized_from_each_quantized_model_is_within_two_points(models_dir, reference, name):
    model_id, files = QUANT_FILES[name]
    document = accuracy_run(models_dir, model_id, "tf", files)
    assert document["context"]["precision"] == "fp32"
    assert document["context"]["weights"]["source_precision"] == "uint8"
    # Counted in images, so that "within 2 points" is exact: 2 points of 500 images = 10 images. (0.25_160 lands
    # exactly 10 images below: its activations were trained quantized, and float activations cost it 2 points.)
    assert abs(document["accuracy"]["correct_top1"] - round(reference[name][0] * 500)) <= 10


def test_tf_and_tflite_on_the_same_canonical_fp32_weights_agree_on_top1(models_dir, tmp_path_factory):
    from requestflow.board.catalogue import get_model
    from requestflow.board.importers import import_weights

    canonical = import_weights([models_dir / H5[1]], get_model(H5[0])).save(tmp_path_factory.mktemp("w") / "h5")
    tf_doc = accuracy_run(models_dir, H5[0], "tf", weights=canonical)
    tflite_doc = accuracy_run(models_dir, H5[0], "tflite", weights=canonical)
    assert tf_doc["context"]["weights"]["sha256"] == tflite_doc["context"]["weights"]["sha256"]
    assert tflite_doc["context"]["backend"]["variant"]["exported_from_canonical"] is True
    agreement = np.mean(top1_classes(tf_doc) == top1_classes(tflite_doc))
    assert agreement >= 0.99


def test_the_two_piece_1_0_224_model_chains_extractor_and_head(models_dir):
    document = accuracy_run(models_dir, "mobilenet-v1-1.0-224", "tflite",
                            ["mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
                             "mobilenet_quant_v1_224_head_layers.tflite"])
    assert document["context"]["backend"]["variant"]["pieces"] == 2
    # No reference row for it in the README; the published 50,000-image top-1 of 1.0_224_quant is 70.1%, and these
    # 500 images score higher than the full set for every model in the table.
    assert document["accuracy"]["top1"] > 0.70


@pytest.mark.parametrize("image,expected", [("cat.bmp", "Egyptian cat"), ("bird.bmp", "chickadee"),
                                            ("parrot.jpg", "macaw"), ("grace_hopper.bmp", "military uniform")])
def test_the_sample_images_give_the_expected_classes(run_cli, data_dir, image, expected):
    code, stdout, _ = run_cli("classify", data_dir / "samples" / image, "--model", "mobilenet-v1-1.0-224",
                              "--backend", "tflite")
    assert code == 0
    first = stdout.splitlines()[1]
    assert f'"{expected}"' in first, stdout
