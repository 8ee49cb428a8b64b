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


NO_VARIANTS = ("--variant: the {backend} backend has no variants (armcl has: target, layout, conv_method, tuner, "
               "conv_methods_file; tf has: compiler)")


def parse_variant(backend: str, given: dict | str | None, source: str = "--variant") -> dict | None:
    """``backend``'s variant with its defaults filled in (armcl, tf), None for a backend without variants; bad
    input, or a variant given to a backend without any, is refused naming ``source``."""
    if backend == "armcl":
        from requestflow.board.backends.armcl_backend import parse_variant as armcl_variant
        return armcl_variant(given, source)
    if backend == "tf":
        from requestflow.board.backends.tf_backend import parse_variant as tf_variant
        return tf_variant(given, source)
    if given:
        raise UserError(NO_VARIANTS.format(backend=backend).replace("--variant", source, 1))
    return None


def create_backend(name: str, model, weights, batch_size: int, threads: int, variant: dict | str | None = None,
                   armcl_build: str | None = None) -> Backend:
    """The backend ``name``. ``variant`` is armcl's or tf's (the others have none), ``armcl_build`` armcl's."""
    if name not in ("armcl", "tf") and variant:
        raise UserError(NO_VARIANTS.format(backend=name))
    if name != "armcl" and armcl_build:
        raise UserError(f"--armcl-build is for the armcl backend, not {name}")
    if name == "tf":
        from requestflow.board.backends.tf_backend import TensorFlowBackend
        return TensorFlowBackend(model, weights, batch_size, threads, variant=variant)
    if name == "tflite":
        from requestflow.board.backends.tflite_backend import TFLiteBackend
        return TFLiteBackend(model, weights, batch_size, threads)
    if name == "armcl":
        from requestflow.board.backends.armcl_backend import ArmclBackend
        return ArmclBackend(model, weights, batch_size, threads, variant=variant, build=armcl_build)
    raise UserError(f"unknown backend {name!r}; known: tf, tflite, armcl")
