"""TFLite files of every kind the importer and the tflite backend meet: float (exported here from real weights)
and full-integer int8 with per-channel weights (made here by the TensorFlow converter from the same weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from requestflow.board.backends.tf_network import export_tflite, forward_function
from requestflow.board.catalogue import get_model
from requestflow.board.dataset import load_dataset
from requestflow.board.image_stream import preprocess_dataset
from requestflow.board.importers import import_weights
from requestflow.board.runner import RunConfig, run
from requestflow.board.schema import validate_document
from requestflow.board.tensorflow_import import import_tensorflow

MODEL = get_model("mobilenet-v1-0.25-224")


@pytest.fixture(scope="module")
def canonical(models_dir):
    return import_weights([models_dir / "mobilenet_v1_0.25_224.h5"], MODEL)


@pytest.fixture(scope="module")
def calibration(val_dir):
    dataset = load_dataset(val_dir, limit=400)
    return np.asarray(preprocess_dataset(dataset, MODEL.resolution, progress=False).pixels)


@pytest.fixture(scope="module")
def int8_model(canonical, calibration, tmp_path_factory):
    """Full-integer quantization, int8 input and output, per-channel weights: the modern LiteRT int8 recipe."""
    tf = import_tensorflow()
    function = tf.function(forward_function(canonical),
                           input_signature=[tf.TensorSpec([1, 224, 224, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = calibration[300:400].astype(np.float32) / 127.5 - 1  # calibrate on images the test does not score
    converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("int8") / "mobilenet_v1_0.25_224_int8.tflite"
    path.write_bytes(converter.convert())
    return path


class TestAFloatTFLiteFile:
    def test_imports_back_to_exactly_the_weights_it_was_exported_from(self, canonical):
        exported = export_tflite(canonical)
        again = import_weights([exported], MODEL)
        assert again.source["precision"] == "fp32" and again.classes == 1000
        assert again.sha256 == canonical.sha256


    def test_a_cached_export_is_found_without_importing_tensorflow(self, tmp_path):
        """Every tflite point on random weights exports them: once converted (TensorFlow imported), a run finds the
        cached file without TensorFlow (seconds and most of a GB less per point)."""
        import os
        import subprocess
        import sys

        script = ("import sys\n"
                  "from requestflow.board.backends.tf_network import export_tflite\n"
                  "from requestflow.board.catalogue import get_model\n"
                  "from requestflow.board.weights import random_weights\n"
                  "path = export_tflite(random_weights(get_model('mobilenet-v1-0.25-128')))\n"
                  "print(path, 'tensorflow' in sys.modules)\n")
        env = {**os.environ, "REQUESTFLOW_CACHE": str(tmp_path)}
        runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                               check=True).stdout.split() for _ in range(2)]
        (first, converted), (again, imported) = runs
        assert first == again and Path(first).is_file() and Path(first).parent == tmp_path / "tflite-export"
        assert (converted, imported) == ("True", "False")
        tf = import_tensorflow()
        assert Path(first).name.endswith(f"-tf{tf.__version__}.tflite")  # the same key as TensorFlow's own version


class TestAnInt8TFLiteFile:
    def test_imports_per_channel_weights_close_to_the_float_ones(self, int8_model, canonical):
        imported = import_weights([int8_model], MODEL)
        assert imported.source["precision"] == "int8"
        for name in ("conv0.weights", "dw5.weights", "pw13.weights", "logits.weights"):
            original, dequantized = canonical.tensors[name], imported.tensors[name]
            # per-channel int8: each output channel's error is at most half its own step, max|w| / 127 / 2
            axis = (0, 1, 3) if name.startswith("dw") else (0, 1, 2)
            step = np.abs(original).max(axis=axis, keepdims=True) / 127
            assert np.all(np.abs(original - dequantized) <= step / 2 + 1e-6), name

    def test_runs_on_the_tflite_backend_with_int8_input_close_to_fp32(self, int8_model, canonical, val_dir,
                                                                       tmp_path):
        documents = {}
        for name, weights in (("int8", int8_model), ("fp32", canonical.save(tmp_path / "fp32"))):
            documents[name] = run(RunConfig(model=MODEL.id, backend="tflite", mode="accuracy", weights=[str(weights)],
                                            images=str(val_dir), limit=300, progress=False))
            validate_document(documents[name])
        assert documents["int8"]["context"]["precision"] == "int8"
        assert documents["fp32"]["accuracy"]["top1"] == pytest.approx(0.64, abs=0.05)
        assert abs(documents["int8"]["accuracy"]["top1"] - documents["fp32"]["accuracy"]["top1"]) <= 0.03
