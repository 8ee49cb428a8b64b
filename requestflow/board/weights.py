"""Canonical MobileNets-v1 weights: one ``.npy`` per tensor plus a manifest, batch norm folded.

The format (documented in ``docs/weights-format.md``) is what every backend, the native ArmCL program included,
reads. A folder holds::

    manifest.json            format, model, classes, source and its sha256, and one entry per tensor
    conv0.weights.npy        float32, HWIO (3, 3, 3, C)
    conv0.bias.npy           float32, (C,)
    dw1.weights.npy          float32, HWC1 (3, 3, C, 1)   depthwise
    pw1.weights.npy          float32, 11IO (1, 1, Cin, Cout)
    ...                      dw1..dw13, pw1..pw13
    logits.weights.npy       float32, (1, 1, Cin, classes)
    logits.bias.npy          float32, (classes,)

``classes`` is 1001 (index 0 = background, TF-slim and TFLite files) or 1000 (Keras). The weights' identity, the
``sha256`` of the manifest, is a hash of the tensors (names, shapes and bytes) in layer order: the same numbers give
the same hash whichever file they came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from requestflow.board.catalogue import ModelConfig, get_model
from requestflow.errors import UserError

FORMAT = "requestflow-canonical-weights"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class CanonicalWeights:
    """Float32 tensors of one model in canonical form, with where they came from."""

    model: ModelConfig
    classes: int
    tensors: dict[str, np.ndarray]  # "<layer>.weights" / "<layer>.bias"
    source: dict = field(default_factory=dict)  # path, sha256, format, release, precision of the stored tensors
    random: bool = False

    def __post_init__(self) -> None:
        if self.classes not in (1000, 1001):
            raise UserError(f"{self.model.id}: {self.classes} classes; canonical weights have 1000 or 1001")
        check_shapes(self.model, self.classes, self.tensors, origin=self.source.get("path", "weights"))
        self.tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.tensors.items()}

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for layer in self.model.layers(self.classes):
            for part in ("weights", "bias"):
                name = f"{layer.name}.{part}"
                array = self.tensors[name]
                digest.update(f"{name}:{'x'.join(map(str, array.shape))}:".encode())
                digest.update(array.tobytes())
        return digest.hexdigest()

    def layer(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.tensors[f"{name}.weights"], self.tensors[f"{name}.bias"]

    def manifest(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model.id,
            "width": self.model.width,
            "resolution": self.model.resolution,
            "classes": self.classes,
            "dtype": "float32",
            "layout": {"conv": "HWIO", "depthwise": "HWC1", "pointwise": "11IO"},
            "batch_norm": "folded",
            "activation": "relu6 after every layer but logits",
            "padding": "SAME",
            "random": self.random,
            "source": self.source,
            "sha256": self.sha256,
            "tensors": [
                {"name": f"{layer.name}.{part}", "file": f"{layer.name}.{part}.npy",
                 "shape": list(self.tensors[f"{layer.name}.{part}"].shape), "stride": layer.stride,
                 "kind": layer.kind}
                for layer in self.model.layers(self.classes) for part in ("weights", "bias")
            ],
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the folder atomically: it appears complete or not at all."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            for name, array in self.tensors.items():
                np.save(staging / f"{name}.npy", array, allow_pickle=False)
            (staging / MANIFEST).write_text(json.dumps(self.manifest(), indent=2) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory


def check_shapes(model: ModelConfig, classes: int, tensors: dict[str, np.ndarray], origin: str) -> None:
    """Refuse tensors that do not fit the model, naming the layer and both shapes."""
    expected = {}
    for layer in model.layers(classes):
        expected[f"{layer.name}.weights"] = layer.weights_shape
        expected[f"{layer.name}.bias"] = layer.bias_shape
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise UserError(f"{origin}: no tensor for {missing[0]} of {model.id}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UserError(f"{origin}: unexpected tensor {extra[0]} for {model.id}")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise UserError(f"{origin}: layer {name} has shape {got}, {model.id} needs {shape}"
                            " (weights for another width?)")


def is_canonical(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_canonical(directory: str | os.PathLike, model: ModelConfig | None = None) -> CanonicalWeights:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{directory}: not a canonical weights folder ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{directory}: format {manifest.get('format')!r} v{manifest.get('format_version')!r} "
                        f"is not {FORMAT} v{FORMAT_VERSION}")
    stored = get_model(manifest["model"])
    if model is not None and stored != model:
        raise UserError(f"{directory}: weights of {stored.id}, not {model.id}")
    tensors = {}
    for entry in manifest["tensors"]:
        try:
            tensors[entry["name"]] = np.load(directory / entry["file"], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{directory}: cannot read {entry['file']}: {exc}") from None
    weights = CanonicalWeights(stored, manifest["classes"], tensors, manifest.get("source", {}),
                               manifest.get("random", False))
    if manifest.get("sha256") != weights.sha256:
        raise UserError(f"{directory}: tensors do not match the manifest's sha256 (modified or corrupted)")
    return weights


def random_weights(model: ModelConfig, classes: int = 1001, seed: int = 0) -> CanonicalWeights:
    """He-initialised weights, for performance runs where no real weights can be had. Labelled ``random``."""
    rng = np.random.default_rng([seed, int(model.width * 100), model.resolution])
    tensors = {}
    for layer in model.layers(classes):
        kh, kw, cin, cout = layer.weights_shape
        fan_in = kh * kw * (1 if layer.kind == "depthwise" else cin)
        tensors[f"{layer.name}.weights"] = rng.normal(0, np.sqrt(2 / fan_in), layer.weights_shape)
        tensors[f"{layer.name}.bias"] = np.zeros(layer.bias_shape)
    return CanonicalWeights(model, classes, tensors,
                            {"format": "random", "seed": seed, "precision": "fp32"}, random=True)


def fold_batch_norm(kernel: np.ndarray, gamma, beta, mean, variance, epsilon: float, channel_axis: int):
    """Fold inference batch norm into (kernel, bias): y = gamma * (x - mean) / sqrt(var + eps) + beta."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    shape = [1] * kernel.ndim
    shape[channel_axis] = -1
    folded = kernel.astype(np.float64) * scale.reshape(shape)
    bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return folded.astype(np.float32), bias.astype(np.float32)
