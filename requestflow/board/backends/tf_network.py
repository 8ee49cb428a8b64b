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
    """A float32 ``.tflite`` of the canonical weights, cached by their sha256 and the TensorFlow version. A cached
    file is found without importing TensorFlow (seconds and most of a GB per run: every tflite point on random
    weights comes here)."""
    path = cache_dir("tflite-export") / f"{weights.model.id}-{weights.sha256[:16]}-tf{_tensorflow_version()}.tflite"
    if path.is_file():
        return path
    tf = import_tensorflow()
    resolution = weights.model.resolution
    function = tf.function(forward_function(weights),
                           input_signature=[tf.TensorSpec([1, resolution, resolution, 3], tf.float32, name="input")])
    concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    return atomic_write_bytes(path, converter.convert())


def _tensorflow_version() -> str:
    """``tf.__version__``, read from the installed distribution that provides the ``tensorflow`` package
    (``tensorflow``, ``tensorflow-cpu``, ...) when TensorFlow is not imported yet; imported when that is unclear."""
    import sys
    from importlib import metadata

    if "tensorflow" not in sys.modules:
        providers = metadata.packages_distributions().get("tensorflow") or []
        if len(set(providers)) == 1:
            try:
                return metadata.version(providers[0])
            except metadata.PackageNotFoundError:
                pass
    return import_tensorflow().__version__
