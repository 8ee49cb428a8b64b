"""The ``tf`` backend: the float network built in TensorFlow from canonical weights, as one compiled graph.

The timed ``invoke()`` is one call of a concrete function; TensorFlow's eager CPU execution is synchronous, so the
result is computed when the call returns. The variant (``--variant compiler=graph|xla``) chooses the compiler:
``graph`` (the default: a ``tf.function`` graph with oneDNN) or ``xla`` (the same function with ``jit_compile=True``;
on this machine XLA on CPU measured 80 ms against 7.3 ms for the graph on 1.0_224, a fact the scoreboard shows).
The point's identity records what ran, ``{"graph": "tf.function", "jit_compile": false|true}``: the graph's is what
every tf result recorded before the variant existed, so those points keep their identity.
"""

from __future__ import annotations

import json

import numpy as np

from requestflow.board.backends.base import FloatBackend, imagenet_scores, to_float_input
from requestflow.board.catalogue import TF_COMPILERS as COMPILERS
from requestflow.errors import UserError, shown


def parse_variant(given: dict | str | None, source: str = "--variant") -> dict:
    """``{"compiler": "graph" | "xla"}`` from a dict, a JSON object or ``compiler=xla`` (nothing: the graph).
    Bad input is refused naming ``source``, the key and the known values."""
    if isinstance(given, str):
        text = given.strip()
        try:
            given = json.loads(text) if text.startswith("{") else dict(
                part.split("=", 1) for part in text.split(",") if part.strip())
        except ValueError:
            raise UserError(f"{source}: {shown(text)} is not compiler=graph|xla or a JSON object") from None
    if not isinstance(given, dict | None):
        raise UserError(f"{source} must be a JSON object or compiler=graph|xla")
    given = {str(k).strip(): v for k, v in (given or {}).items()}
    unknown = sorted(set(given) - {"compiler"})
    if unknown:
        raise UserError(f"{source}: unknown key {shown(unknown[0])} for tf; known: compiler")
    compiler = str(given.get("compiler", "graph")).strip().lower()
    if compiler not in COMPILERS:
        raise UserError(f"{source}: compiler {shown(given.get('compiler'))}; known: {', '.join(COMPILERS)}")
    return {"compiler": compiler}


class TensorFlowBackend(FloatBackend):
    name = "tf"

    def __init__(self, model, weights, batch_size: int, threads: int, variant: dict | str | None = None):
        super().__init__(model, weights, batch_size, threads)
        self.jit = parse_variant(variant)["compiler"] == "xla"

    def load(self) -> None:
        from requestflow.board.tensorflow_import import import_tensorflow
        tf = import_tensorflow()

        from requestflow.board.backends.tf_network import forward_function

        self._threads = _set_threads(tf, self.threads)
        canonical = self.weights.canonical_for(self.model)
        resolution = self.model.resolution
        spec = tf.TensorSpec([self.batch_size, resolution, resolution, 3], tf.float32)
        self._fn = tf.function(forward_function(canonical, for_onednn=True), input_signature=[spec],
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
        from requestflow.board.runtime import annotate
        from requestflow.board.tensorflow_import import import_tensorflow
        tf = import_tensorflow()
        return annotate({"name": self.name, "version": tf.__version__, "library": "tensorflow",
                         "variant": {"graph": "tf.function", "jit_compile": self.jit}, "threads": self._threads})


def _set_threads(tf, threads: int) -> dict:
    """Set TensorFlow's thread pools before its runtime starts; report what is really in force."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process (e.g. several runs in one test session)
        pass
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
