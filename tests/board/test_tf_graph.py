"""The tf backend's graph (``forward_function(..., for_onednn=True)``, issue #20): weights as Const nodes of the traced
graph, and the depthwise convolutions' ReLU6 alone as ``tf.nn.relu6`` (fused into oneDNN's convolution); the other
convolutions' as ``clip_by_value`` (Maximum, Minimum: not fused, slow in oneDNN's gemm 1x1 kernel without AVX-512).
Its probabilities are the exporter's graph's, and no weight is a captured input of the function."""

from __future__ import annotations

import numpy as np

from requestflow.board.backends.tf_network import forward_function
from requestflow.board.catalogue import get_model
from requestflow.board.tensorflow_import import import_tensorflow
from requestflow.board.weights import random_weights

MODEL = get_model("mobilenet-v1-0.25-128")


def test_the_backends_graph_computes_what_the_exporters_does_with_the_weights_as_constants():
    tf = import_tensorflow()
    weights = random_weights(MODEL, seed=3)
    spec = tf.TensorSpec([2, 128, 128, 3], tf.float32)
    backend = tf.function(forward_function(weights, for_onednn=True), input_signature=[spec]).get_concrete_function()
    exporter = tf.function(forward_function(weights), input_signature=[spec]).get_concrete_function()
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32))

    np.testing.assert_allclose(backend(x).numpy(), exporter(x).numpy(), rtol=1e-5, atol=1e-7)
    assert len(backend.captured_inputs) == 0 and len(exporter.captured_inputs) > 0
    ops = [op.type for op in backend.graph.get_operations()]
    kinds = [layer.kind for layer in MODEL.layers(weights.classes)[:-1]]  # the classifier has no activation
    assert ops.count("Relu6") == kinds.count("depthwise")
    assert ops.count("Minimum") == len(kinds) - kinds.count("depthwise")  # clip_by_value: Maximum, then Minimum
