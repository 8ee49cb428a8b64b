"""The ``tf`` backend: the float network built in TensorFlow from canonical weights, as one compiled graph.

The timed ``invoke()`` is one call of a concrete function (graph mode with oneDNN; XLA only when ``jit``); TensorFlow's
eager CPU execution is synchronous, so the result is computed when the call returns.
"""

from __future__ import annotations

import numpy as np

from requestflow.board.backends.base import FloatBackend, imagenet_scores, to_float_input


class TensorFlowBackend(FloatBackend):
    name = "tf"
    jit = False  # XLA on CPU measured 80 ms vs 7.3 ms (oneDNN graph) for 1.0_224 on this machine

    def load(self) -> None:
        from requestflow.board.tensorflow_import import import_tensorflow
        tf = import_tensorflow()

        from requestflow.board.backends.tf_network import forward_function

        self._threads = _set_threads(tf, self.threads)
        canonical = self.weights.canonical_for(self.model)
        resolution = self.model.resolution
        spec = tf.TensorSpec([self.batch_size, resolution, resolution, 3], tf.float32)
        self._fn = tf.function(forward_function(canonical), input_signature=[spec],
                               jit_compile=self.jit).get_concrete_function()
        self._x = tf.zeros(spec.shape, tf.float32)
        self._out = self._fn(self._x)  # compiles: part of the setup, not of any timed run
        self._tf = tf

    def set_input(self, batch: np.ndarray) -> None:
        self._x = self._tf.constant(to_float_input(batch))

    def invoke(self) -> None:
        self._out = self._fn(self._x)

    def scores(self) -> np.ndarray:
        return imagenet_scores(self._out.numpy())

    def info(self) -> dict:
        from requestflow.board.tensorflow_import import import_tensorflow
        tf = import_tensorflow()
        return {"name": self.name, "version": tf.__version__, "library": "tensorflow",
                "variant": {"graph": "tf.function", "jit_compile": self.jit}, "threads": self._threads}


def _set_threads(tf, threads: int) -> dict:
    """Set TensorFlow's thread pools before its runtime starts; report what is really in force."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process (e.g. several runs in one test session)
        pass
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
