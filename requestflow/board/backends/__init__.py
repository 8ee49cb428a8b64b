"""Backends: one small interface, one implementation per library.

A backend is created with the model, its resolved weights, batch size and thread count; ``load()`` does all the
set-up (weights, graph, compilation, allocation) and is timed by the runner as setup. Then, for each batch:
``set_input(batch)`` (not timed in performance mode), ``invoke()`` (the timed region: the inference alone, with
the result ready when it returns), ``scores()`` (probabilities over the 1000 ImageNet classes, background dropped).
"""

from __future__ import annotations

from requestflow.board.backends.base import Backend, FloatBackend, imagenet_scores, to_float_input
from requestflow.errors import UserError

__all__ = ["Backend", "FloatBackend", "create_backend", "imagenet_scores", "to_float_input"]


def create_backend(name: str, model, weights, batch_size: int, threads: int, variant: dict | str | None = None,
                   armcl_build: str | None = None) -> Backend:
    """The backend ``name``. ``variant`` and ``armcl_build`` are the armcl backend's (the others have none)."""
    if name != "armcl":
        if variant:
            raise UserError(f"--variant: the {name} backend has no variants (armcl has: target, layout, "
                            "conv_method, tuner, conv_methods_file)")
        if armcl_build:
            raise UserError(f"--armcl-build is for the armcl backend, not {name}")
    if name == "tf":
        from requestflow.board.backends.tf_backend import TensorFlowBackend
        return TensorFlowBackend(model, weights, batch_size, threads)
    if name == "tflite":
        from requestflow.board.backends.tflite_backend import TFLiteBackend
        return TFLiteBackend(model, weights, batch_size, threads)
    if name == "armcl":
        from requestflow.board.backends.armcl_backend import ArmclBackend
        return ArmclBackend(model, weights, batch_size, threads, variant=variant, build=armcl_build)
    raise UserError(f"unknown backend {name!r}; known: tf, tflite, armcl")
