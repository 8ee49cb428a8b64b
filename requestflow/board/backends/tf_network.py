"""MobileNets-v1 as a TensorFlow function over canonical weights (used by the ``tf`` backend and the exporter)."""

from __future__ import annotations

from pathlib import Path

from requestflow.board.files import atomic_write_bytes, cache_dir
from requestflow.board.tensorflow_import import import_tensorflow
from requestflow.board.weights import CanonicalWeights


def forward_function(weights: CanonicalWeights, for_onednn: bool = False):
    """A Python function ``x -> probabilities`` (NHWC float32 in [-1, 1] -> [B, classes]); weights are constants.

    ``for_onednn`` (the ``tf`` backend's graph; the exporter keeps the plain one, which the TFLite converter knows):
    the weights are ``Const`` nodes of the traced graph, not captured inputs of the function, so oneDNN knows its
    filters are constant and reorders them once (captured filters: a reorder every call), and only the depthwise
    convolutions' ReLU6 is ``tf.nn.relu6``, fused by Grappler's remapper into their convolution (``brdgmm_dw``
    applies it well on AVX2 and AVX-512); the other convolutions' is ``clip_by_value``, left out of their fused
    convolution (bias only). Without AVX-512 (oneDNN held to AVX2 on the AMD EPYC, ONEDNN_VERBOSE), the 1x1
    convolutions with a fused clip run as ``gemm:jit``, constant filters or not, and its clip is slow (0.42 ms
    against 0.07 ms for a 128-channel 14x14 layer); constant filters without it run as ``brgconv_1x1:avx2``.
    The same arithmetic: every output identical (issue #20, bench/RESULTS.md)."""
    tf = import_tensorflow()

    arrays = [(layer, weights.tensors[f"{layer.name}.weights"], weights.tensors[f"{layer.name}.bias"])
              for layer in weights.model.layers(weights.classes)]
    # numpy arrays become Const nodes when traced; tensors made here become captured inputs of the function
    layers = arrays if for_onednn else [(layer, tf.constant(k), tf.constant(b)) for layer, k, b in arrays]
    classes = weights.classes

    def pointwise_relu6(x):
        return tf.clip_by_value(x, 0.0, 6.0) if for_onednn else tf.nn.relu6(x)

    def forward(x):
        for layer, kernel, bias in layers[:-1]:
            strides = [1, layer.stride, layer.stride, 1]
            if layer.kind == "depthwise":
                x = tf.nn.relu6(tf.nn.bias_add(tf.nn.depthwise_conv2d(x, kernel, strides, "SAME"), bias))
            else:
                x = pointwise_relu6(tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides, "SAME"), bias))
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
