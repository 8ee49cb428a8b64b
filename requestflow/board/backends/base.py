"""The backend interface (``Backend``), the float backends' common part (``FloatBackend``) and the score
helpers every backend uses. ``requestflow.board.backends.create_backend`` picks the implementation."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from requestflow.board.catalogue import ModelConfig
    from requestflow.board.resolve import ResolvedWeights


class Backend(abc.ABC):
    name: str = ""

    def __init__(self, model: ModelConfig, weights: ResolvedWeights, batch_size: int, threads: int):
        self.model = model
        self.weights = weights
        self.batch_size = batch_size
        self.threads = threads

    @property
    @abc.abstractmethod
    def input_dtype(self) -> np.dtype:
        """uint8: the preprocessed pixels as they are; float32: scaled to [-1, 1] by ``x / 127.5 - 1``."""

    @property
    @abc.abstractmethod
    def precision(self) -> str:
        """The stored tensor type of the weights that are run: fp32, uint8 or int8."""

    @property
    @abc.abstractmethod
    def classes(self) -> int:
        """Classes of the model's output: 1001 (background first) or 1000."""

    @abc.abstractmethod
    def load(self) -> None: ...

    @abc.abstractmethod
    def set_input(self, batch: np.ndarray) -> None:
        """``batch``: uint8 NHWC pixels of exactly ``batch_size`` images."""

    @abc.abstractmethod
    def invoke(self) -> None: ...

    @abc.abstractmethod
    def scores(self) -> np.ndarray:
        """float32 [batch_size, 1000]."""

    def after_close(self) -> dict:
        """Facts known only once the backend has closed, merged into the result's ``context.backend`` (never part
        of the point's identity): none by default."""
        return {}


class FloatBackend(Backend):
    """A backend that computes in float32 on the canonical weights (tf, armcl): quantized weights run dequantized."""

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def precision(self) -> str:
        return "fp32"

    @property
    def classes(self) -> int:
        return self.weights.canonical_for(self.model).classes

    @abc.abstractmethod
    def info(self) -> dict:
        """``{"name", "version", "variant": {...}, "threads"}``: what the point's identity needs to know."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what ``load`` took."""


def to_float_input(batch: np.ndarray) -> np.ndarray:
    """Inception scaling of uint8 pixels: x / 127.5 - 1."""
    return batch.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def imagenet_scores(output: np.ndarray) -> np.ndarray:
    """[B, 1001] (index 0 = background) or [B, 1000] -> [B, 1000] over ImageNet classes 0..999."""
    output = output.reshape(output.shape[0], -1)
    if output.shape[1] == 1001:
        return output[:, 1:]
    if output.shape[1] == 1000:
        return output
    raise ValueError(f"model output has {output.shape[1]} classes, expected 1000 or 1001")
