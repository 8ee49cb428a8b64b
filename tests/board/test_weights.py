"""Importing real weights into the canonical format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from requestflow.board.catalogue import get_model
from requestflow.board.importers import import_weights
from requestflow.board.weights import load_canonical, random_weights
from requestflow.errors import UserError

QUANT = {
    "mobilenet-v1-0.25-128": ["mobilenet_v1_0.25_128_quant.tflite"],
    "mobilenet-v1-0.5-160": ["mobilenet_v1_0.5_160_quant.tflite"],
    "mobilenet-v1-1.0-224": ["mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
                             "mobilenet_quant_v1_224_head_layers.tflite"],
}


class TestImportingTFLite:
    @pytest.mark.parametrize("model_id", QUANT)
    def test_dequantizes_every_layer_of_a_quantized_model(self, models_dir, model_id):
        model = get_model(model_id)
        weights = import_weights([models_dir / f for f in QUANT[model_id]], model)
        assert weights.classes == 1001
        assert weights.source["precision"] == "uint8"
        assert weights.tensors["conv0.weights"].dtype == np.float32
        assert weights.tensors["logits.weights"].shape == (1, 1, model.depth(1024), 1001)
        # batch norm is folded into these files: real biases, not zeros
        assert np.abs(weights.tensors["pw13.bias"]).max() > 0

    def test_dequantization_is_scale_times_q_minus_zero_point(self, models_dir):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        path = models_dir / "mobilenet_v1_0.25_128_quant.tflite"
        interpreter = Interpreter(model_path=str(path),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
        detail = next(d for d in interpreter.get_tensor_details() if "Conv2d_0/weights_quant" in d["name"])
        q = interpreter.get_tensor(detail["index"]).astype(np.float64)  # OHWI
        scale, zero_point = detail["quantization"]
        weights = import_weights([path], get_model("mobilenet-v1-0.25-128"))
        np.testing.assert_allclose(weights.tensors["conv0.weights"], ((q - zero_point) * scale).transpose(1, 2, 3, 0),
                                   rtol=1e-6)

    def test_the_two_pieces_give_the_same_weights_in_either_order(self, models_dir):
        model = get_model("mobilenet-v1-1.0-224")
        pieces = [models_dir / f for f in QUANT["mobilenet-v1-1.0-224"]]
        forward = import_weights(pieces, model)
        backward = import_weights(pieces[::-1], model)
        assert forward.sha256 == backward.sha256
        assert forward.source["sha256"] == backward.source["sha256"]

    def test_an_extractor_without_its_head_is_refused(self, models_dir):
        with pytest.raises(UserError, match="27 convolution layers.*needs its head"):
            import_weights([models_dir / QUANT["mobilenet-v1-1.0-224"][0]], get_model("mobilenet-v1-1.0-224"))

    def test_weights_of_another_width_are_refused_naming_layer_and_shapes(self, models_dir):
        with pytest.raises(UserError, match=r"layer conv0.weights has shape \(3, 3, 3, 8\), "
                                            r"mobilenet-v1-0.5-128 needs \(3, 3, 3, 16\)"):
            import_weights([models_dir / "mobilenet_v1_0.25_128_quant.tflite"], get_model("mobilenet-v1-0.5-128"))


class TestImportingKerasH5:
    def test_folds_batch_norm_into_1000_class_weights(self, models_dir):
        weights = import_weights([models_dir / "mobilenet_v1_0.25_224.h5"], get_model("mobilenet-v1-0.25-224"))
        assert weights.classes == 1000
        assert weights.source["format"] == "h5" and weights.source["precision"] == "fp32"
        import h5py
        with h5py.File(models_dir / "mobilenet_v1_0.25_224.h5") as f:
            g = f["model_weights"]
            kernel = g["conv1/conv1/kernel:0"][()]
            bn = {k: g[f"conv1_bn/conv1_bn/{k}:0"][()] for k in ("gamma", "beta", "moving_mean", "moving_variance")}
        scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + 1e-3)
        np.testing.assert_allclose(weights.tensors["conv0.weights"], kernel * scale, rtol=1e-5)
        np.testing.assert_allclose(weights.tensors["conv0.bias"], bn["beta"] - bn["moving_mean"] * scale,
                                   rtol=1e-5, atol=1e-6)

    def test_an_h5_for_another_width_is_refused(self, models_dir):
        with pytest.raises(UserError, match="layer conv0.weights has shape"):
            import_weights([models_dir / "mobilenet_v1_0.25_224.h5"], get_model("mobilenet-v1-1.0-224"))


class TestTheCanonicalFolder:
    def test_round_trips_with_the_same_hash(self, models_dir, tmp_path):
        weights = import_weights([models_dir / "mobilenet_v1_0.25_224.h5"], get_model("mobilenet-v1-0.25-224"))
        folder = weights.save(tmp_path / "w")
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["sha256"] == weights.sha256
        assert manifest["source"]["sha256"] == weights.source["sha256"]
        assert len(manifest["tensors"]) == 56
        again = load_canonical(folder)
        assert again.sha256 == weights.sha256 and again.classes == 1000

    def test_a_modified_tensor_is_detected(self, tmp_path):
        weights = random_weights(get_model("mobilenet-v1-0.25-128"))
        folder = weights.save(tmp_path / "w")
        tensor = np.load(folder / "dw3.weights.npy")
        tensor[0, 0, 0, 0] += 1
        np.save(folder / "dw3.weights.npy", tensor)
        with pytest.raises(UserError, match="do not match the manifest's sha256"):
            load_canonical(folder)

    def test_a_folder_of_another_model_is_refused(self, tmp_path):
        folder = random_weights(get_model("mobilenet-v1-0.25-128")).save(tmp_path / "w")
        with pytest.raises(UserError, match="weights of mobilenet-v1-0.25-128, not mobilenet-v1-0.25-160"):
            load_canonical(folder, get_model("mobilenet-v1-0.25-160"))

    def test_random_weights_are_labelled_and_reproducible(self):
        model = get_model("mobilenet-v1-0.5-160")
        first, second = random_weights(model), random_weights(model)
        assert first.random and first.manifest()["random"] is True
        assert first.sha256 == second.sha256

    def test_saving_over_an_existing_folder_replaces_it_whole(self, tmp_path):
        model = get_model("mobilenet-v1-0.25-128")
        random_weights(model, seed=1).save(tmp_path / "w")
        second = random_weights(model, seed=2)
        second.save(tmp_path / "w")
        assert load_canonical(tmp_path / "w").sha256 == second.sha256
        assert [p.name for p in tmp_path.iterdir()] == ["w"]
