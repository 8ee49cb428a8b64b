"""Importing TF-slim checkpoints (``MobilenetV1/...`` variables): batch norm folded, shapes checked.

No official checkpoint is in the shared data, so the tests write one with ``tf.compat.v1.train.Saver`` under TF-slim's
variable names (tensorflow/models research/slim/nets/mobilenet_v1.py: ``Conv2d_0``, ``Conv2d_<i>_depthwise``,
``Conv2d_<i>_pointwise``, each with ``BatchNorm/{gamma,beta,moving_mean,moving_variance}``, then
``Logits/Conv2d_1c_1x1/{weights,biases}``). The numbers come from the real Keras .h5: its folded weights are
"unfolded" with non-trivial batch-norm parameters, so the importer's folding must give them back.
"""

from __future__ import annotations

import numpy as np
import pytest

from requestflow.board.catalogue import ModelConfig, get_model, model_for
from requestflow.board.importers import detect_format, import_weights, slim_variable_names
from requestflow.board.weights import CanonicalWeights, random_weights
from requestflow.errors import UserError

MODEL = get_model("mobilenet-v1-0.25-224")
KERAS_H5 = "mobilenet_v1_0.25_224.h5"
EPSILON = 1e-3  # TF-slim's mobilenet_v1_arg_scope batch_norm_epsilon
BN = ("gamma", "beta", "moving_mean", "moving_variance")


def slim_scope(layer: str) -> str:
    """TF-slim's scope of a canonical layer, spelled out here rather than taken from the code under test."""
    if layer == "conv0":
        return "MobilenetV1/Conv2d_0"
    if layer == "logits":
        return "MobilenetV1/Logits/Conv2d_1c_1x1"
    return f"MobilenetV1/Conv2d_{layer[2:]}_{'depthwise' if layer.startswith('dw') else 'pointwise'}"


def channel_axis(kind: str) -> int:
    return 2 if kind == "depthwise" else 3


def unfold(model: ModelConfig, canonical: CanonicalWeights, seed: int = 0) -> dict[str, np.ndarray]:
    """TF-slim variables (float32) whose inference batch norm folds back to ``canonical``'s tensors.

    gamma in [0.5, 2], moving_mean ~ N(0, 1), moving_variance in [0.01, 2] (small enough that epsilon matters), and
    kernel = folded / scale, beta = folded bias + mean * scale with scale = gamma / sqrt(variance + epsilon)."""
    rng = np.random.default_rng(seed)
    variables = {}
    for layer in model.layers(canonical.classes):
        scope = slim_scope(layer.name)
        weights, bias = (t.astype(np.float64) for t in canonical.layer(layer.name))
        if layer.name == "logits":
            if canonical.classes == 1000:  # TF-slim has a background class in front
                weights = np.concatenate([rng.normal(0, 0.01, weights.shape[:3] + (1,)), weights], axis=3)
                bias = np.concatenate([[-1.0], bias])
            variables[f"{scope}/weights"] = weights
            variables[f"{scope}/biases"] = bias
            continue
        channels = bias.shape[0]
        gamma = rng.uniform(0.5, 2.0, channels)
        mean = rng.normal(0.0, 1.0, channels)
        variance = rng.uniform(0.01, 2.0, channels)
        scale = gamma / np.sqrt(variance + EPSILON)
        shape = [1, 1, 1, 1]
        shape[channel_axis(layer.kind)] = -1
        kernel_name = "depthwise_weights" if layer.kind == "depthwise" else "weights"
        variables[f"{scope}/{kernel_name}"] = weights / scale.reshape(shape)
        variables[f"{scope}/BatchNorm/gamma"] = gamma
        variables[f"{scope}/BatchNorm/beta"] = bias + mean * scale
        variables[f"{scope}/BatchNorm/moving_mean"] = mean
        variables[f"{scope}/BatchNorm/moving_variance"] = variance
    return {name: value.astype(np.float32) for name, value in variables.items()}


def expected_folding(variables: dict[str, np.ndarray], model: ModelConfig, epsilon: float = EPSILON):
    """Canonical tensors folded in float64 from the checkpoint's own float32 values: y = gamma (x - mean) /
    sqrt(var + eps) + beta, per output channel."""
    out = {}
    for layer in model.layers(1001):
        scope = slim_scope(layer.name)
        if layer.name == "logits":
            out["logits.weights"] = variables[f"{scope}/weights"]
            out["logits.bias"] = variables[f"{scope}/biases"]
            continue
        kernel = variables[f"{scope}/{'depthwise_weights' if layer.kind == 'depthwise' else 'weights'}"]
        kernel = kernel.astype(np.float64)
        gamma, beta, mean, variance = (variables[f"{scope}/BatchNorm/{v}"].astype(np.float64) for v in BN)
        folded = np.empty_like(kernel)
        bias = np.empty_like(beta)
        for c in range(beta.shape[0]):  # one channel at a time, to be independent of the importer's broadcasting
            s = gamma[c] / np.sqrt(variance[c] + epsilon)
            if layer.kind == "depthwise":
                folded[:, :, c, :] = kernel[:, :, c, :] * s
            else:
                folded[..., c] = kernel[..., c] * s
            bias[c] = beta[c] - mean[c] * s
        out[f"{layer.name}.weights"] = folded
        out[f"{layer.name}.bias"] = bias
    return out


def write_slim_checkpoint(prefix, variables: dict[str, np.ndarray]) -> str:
    """A TF1 checkpoint as TF-slim's training wrote them: graph mode, ``tf.compat.v1.train.Saver``."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        var_list = {name: tf.compat.v1.Variable(value, name=name.replace("/", "_"))
                    for name, value in variables.items()}
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, str(prefix), write_meta_graph=False)


@pytest.fixture(scope="module")
def keras_weights(models_dir) -> CanonicalWeights:
    return import_weights([models_dir / KERAS_H5], MODEL)


@pytest.fixture(scope="module")
def slim_variables(keras_weights) -> dict[str, np.ndarray]:
    variables = unfold(MODEL, keras_weights)
    # a training checkpoint also holds variables the importer must ignore
    variables["global_step"] = np.array(123456, np.int64)
    variables["MobilenetV1/Conv2d_0/weights/RMSProp"] = np.zeros_like(variables["MobilenetV1/Conv2d_0/weights"])
    variables["MobilenetV1/Conv2d_0/BatchNorm/beta/ExponentialMovingAverage"] = np.zeros(MODEL.depth(32), np.float32)
    return variables


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, slim_variables) -> str:
    folder = tmp_path_factory.mktemp("slim")
    return write_slim_checkpoint(folder / "mobilenet_v1_0.25_224.ckpt", slim_variables)


def variant_checkpoint(tmp_path, variables: dict[str, np.ndarray]) -> str:
    return write_slim_checkpoint(tmp_path / "variant.ckpt", variables)


class TestTheCheckpointWrittenForTheseTests:
    def test_has_exactly_tf_slims_variable_names_and_shapes(self, checkpoint):
        import tensorflow as tf

        shapes = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
        assert shapes["MobilenetV1/Conv2d_0/weights"] == [3, 3, 3, 8]
        assert shapes["MobilenetV1/Conv2d_0/BatchNorm/moving_variance"] == [8]
        assert shapes["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"] == [3, 3, 8, 1]
        assert shapes["MobilenetV1/Conv2d_1_pointwise/weights"] == [1, 1, 8, 16]
        assert shapes["MobilenetV1/Conv2d_13_pointwise/BatchNorm/gamma"] == [256]
        assert shapes["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] == [1, 1, 256, 1001]
        assert shapes["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] == [1001]
        model_variables = [name for name in shapes if name.startswith("MobilenetV1/") and "RMSProp" not in name
                           and "ExponentialMovingAverage" not in name]
        assert len(model_variables) == 27 * 5 + 2  # conv0, dw1..13, pw1..13 x (kernel + 4 batch norm); logits x 2

    def test_is_recognised_as_a_checkpoint_by_its_prefix(self, checkpoint):
        from pathlib import Path

        assert detect_format([Path(checkpoint)]) == "checkpoint"

    def test_the_importers_scopes_are_tf_slims(self):
        assert [slim_variable_names(layer.name) for layer in MODEL.layers()] == [
            slim_scope(layer.name) for layer in MODEL.layers()]


class TestImportingATfSlimCheckpoint:
    def test_folds_batch_norm_exactly_as_tf_slim_defines_it(self, checkpoint, slim_variables):
        weights = import_weights([checkpoint], MODEL)
        expected = expected_folding(slim_variables, MODEL)
        assert set(weights.tensors) == set(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(weights.tensors[name], value, rtol=1e-5, atol=0, err_msg=name)

    def test_the_batch_norm_parameters_are_not_trivial(self, slim_variables):
        # otherwise a wrong epsilon, or folding that ignores a parameter, would go unnoticed
        expected = expected_folding(slim_variables, MODEL)
        sloppy = expected_folding(slim_variables, MODEL, epsilon=1e-5)
        assert not np.allclose(expected["pw5.weights"], sloppy["pw5.weights"], rtol=1e-4, atol=0)
        gamma = slim_variables["MobilenetV1/Conv2d_3_depthwise/BatchNorm/gamma"]
        mean = slim_variables["MobilenetV1/Conv2d_3_depthwise/BatchNorm/moving_mean"]
        assert gamma.std() > 0.2 and np.abs(mean).max() > 0.5

    def test_gives_back_the_keras_weights_it_was_made_from(self, checkpoint, keras_weights):
        weights = import_weights([checkpoint], MODEL)
        assert weights.classes == 1001
        for layer in MODEL.layers():
            if layer.name == "logits":
                np.testing.assert_array_equal(weights.tensors["logits.weights"][..., 1:],
                                              keras_weights.tensors["logits.weights"])
                np.testing.assert_array_equal(weights.tensors["logits.bias"][1:], keras_weights.tensors["logits.bias"])
                continue
            for part in ("weights", "bias"):
                name = f"{layer.name}.{part}"
                keras = keras_weights.tensors[name]
                # float32 storage of kernel / scale and of bias + mean * scale: relative error ~1e-7 of the terms
                np.testing.assert_allclose(weights.tensors[name], keras, rtol=1e-5, atol=1e-5 * np.abs(keras).max(),
                                           err_msg=name)

    @pytest.mark.parametrize("layer_name", ["conv0", "dw1", "pw1", "dw13", "pw13"])
    def test_a_folded_layer_computes_what_tensorflows_inference_batch_norm_computes(self, checkpoint, slim_variables,
                                                                                    layer_name):
        import tensorflow as tf

        weights = import_weights([checkpoint], MODEL)
        layer = next(layer for layer in MODEL.layers() if layer.name == layer_name)
        scope = slim_scope(layer_name)
        kernel = slim_variables[f"{scope}/{'depthwise_weights' if layer.kind == 'depthwise' else 'weights'}"]
        gamma, beta, mean, variance = (slim_variables[f"{scope}/BatchNorm/{v}"] for v in BN)
        x = tf.constant(np.random.default_rng(1).normal(0, 1, (2, 9, 9, kernel.shape[2])).astype(np.float32))

        def convolve(k):
            if layer.kind == "depthwise":
                return tf.nn.depthwise_conv2d(x, k, strides=[1, 1, 1, 1], padding="SAME")
            return tf.nn.conv2d(x, k, strides=1, padding="SAME")

        reference = tf.nn.batch_normalization(convolve(kernel), mean, variance, offset=beta, scale=gamma,
                                              variance_epsilon=EPSILON)
        folded_weights, folded_bias = weights.layer(layer_name)
        folded = convolve(folded_weights) + folded_bias
        np.testing.assert_allclose(folded.numpy(), reference.numpy(), rtol=1e-4,
                                   atol=1e-4 * float(np.abs(reference.numpy()).max()))

    def test_the_source_is_labelled_checkpoint_fp32_and_hashed(self, checkpoint):
        source = import_weights([checkpoint], MODEL, release="2017_06_14").source
        assert (source["format"], source["precision"], source["release"]) == ("checkpoint", "fp32", "2017_06_14")
        assert len(source["sha256"]) == 64

    def test_the_index_file_can_be_named_instead_of_the_prefix(self, checkpoint):
        by_prefix = import_weights([checkpoint], MODEL)
        by_index = import_weights([f"{checkpoint}.index"], MODEL)
        assert by_index.sha256 == by_prefix.sha256

    def test_the_index_file_and_the_prefix_give_the_same_source_sha256(self, checkpoint):
        by_prefix = import_weights([checkpoint], MODEL)
        by_index = import_weights([f"{checkpoint}.index"], MODEL)
        assert by_index.source["sha256"] == by_prefix.source["sha256"]

    def test_batch_norm_without_gamma_scale_false_folds_with_gamma_one(self, tmp_path, slim_variables):
        variables = {name: value for name, value in slim_variables.items() if not name.endswith("/gamma")}
        weights = import_weights([variant_checkpoint(tmp_path, variables)], MODEL)
        ones = {name: value for name, value in slim_variables.items()}
        for name, value in slim_variables.items():
            if name.endswith("/gamma"):
                ones[name] = np.ones_like(value)
        for name, value in expected_folding(ones, MODEL).items():
            np.testing.assert_allclose(weights.tensors[name], value, rtol=1e-5, atol=0, err_msg=name)


class TestACheckpointThatDoesNotFit:
    @pytest.mark.parametrize("missing", [
        "MobilenetV1/Conv2d_0/weights",
        "MobilenetV1/Conv2d_7_depthwise/depthwise_weights",
        "MobilenetV1/Conv2d_7_pointwise/BatchNorm/moving_variance",
        "MobilenetV1/Conv2d_13_pointwise/BatchNorm/beta",
        "MobilenetV1/Logits/Conv2d_1c_1x1/biases",
    ])
    def test_a_missing_variable_is_a_user_error_naming_it(self, tmp_path, slim_variables, missing):
        variables = {name: value for name, value in slim_variables.items() if name != missing}
        prefix = variant_checkpoint(tmp_path, variables)
        with pytest.raises(UserError, match=f"no variable {missing};") as excinfo:
            import_weights([prefix], MODEL)
        assert prefix in str(excinfo.value)

    def test_a_checkpoint_of_another_width_names_the_layer_and_both_shapes(self, tmp_path):
        wider = model_for(0.5, 224)
        prefix = variant_checkpoint(tmp_path, unfold(wider, random_weights(wider), seed=3))
        with pytest.raises(UserError) as excinfo:
            import_weights([prefix], MODEL)
        message = str(excinfo.value)
        assert "conv0.weights" in message
        assert "(3, 3, 3, 16)" in message  # what the 0.5 checkpoint has
        assert "(3, 3, 3, 8)" in message  # what mobilenet-v1-0.25-224 needs
        assert MODEL.id in message

    def test_a_checkpoint_of_a_narrower_width_is_refused_too(self, tmp_path):
        narrower = model_for(0.25, 224)
        prefix = variant_checkpoint(tmp_path, unfold(narrower, random_weights(narrower), seed=4))
        with pytest.raises(UserError, match=r"layer conv0\.weights has shape \(3, 3, 3, 8\), "
                                            r"mobilenet-v1-1\.0-224 needs \(3, 3, 3, 32\)"):
            import_weights([prefix], get_model("mobilenet-v1-1.0-224"))

    def test_a_file_that_is_not_a_checkpoint_is_a_user_error(self, tmp_path):
        prefix = tmp_path / "broken.ckpt"
        (tmp_path / "broken.ckpt.index").write_bytes(b"not a tensor bundle")
        with pytest.raises(UserError, match="not a readable TensorFlow checkpoint"):
            import_weights([prefix], MODEL)

    def test_a_prefix_with_nothing_behind_it_is_a_user_error(self, tmp_path):
        with pytest.raises(UserError, match="does not exist"):
            import_weights([tmp_path / "nothing.ckpt"], MODEL)
