"""MobileNets-v1 as a TensorFlow function over canonical weights (used by the ``tf`` backend and the exporter)."""

from __future__ import annotations

from pathlib import Path

from requestflow.board.files import atomic_write_bytes, cache_dir
from requestflow.board.tensorflow_import import import_tensorflow
from requestflow.board.weights import CanonicalWeights


def forward_function(weights: CanonicalWeights):
    """A Python function ``x -> probabilities`` (NHWC float32 in [-1, 1] -> [B, classes]); weights are constants."""
    tf = import_tensorflow()

    layers = [(layer, tf.constant(weights.tensors[f"{layer.name}.weights"]),
               tf.constant(weights.tensors[f"{layer.name}.bias"])) for layer in weights.model.layers(weights.classes)]
    classes = weights.classes

    def forward(x):
        for layer, kernel, bias in layers[:-1]:
            strides = [1, layer.stride, layer.stride, 1]
            if layer.kind == "depthwise":
                x = tf.nn.depthwise_conv2d(x, kernel, strides, "SAME")
            else:
                x = tf.nn.conv2d(x, kernel, strides, "SAME")
            x = tf.nn.relu6(tf.nn.bias_add(x, bias))
        x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        _, kernel, bias = layers[-1]
        x = tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "VALID"), bias)
        return tf.nn.softmax(tf.reshape(x, [-1, classes]))

    return forward


def export_tflite(weights: CanonicalWeights) -> Path:
    """A float32 ``.tflite`` of the canonical weights, cached by their sha256 and the TensorFlow version."""
    tf = import_tensorflow()
    path = cache_dir("tflite-export") / f"{weights.model.id}-{weights.sha256[:16]}-tf{tf.__version__}.tflite"
    if path.is_file():
        return path
    resolution = weights.model.resolution
    function = tf.function(forward_function(weights),
                           input_signature=[tf.TensorSpec([1, resolution, resolution, 3], tf.float32, name="input")])
    concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    return atomic_write_bytes(path, converter.convert())
