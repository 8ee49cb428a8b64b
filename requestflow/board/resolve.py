"""Which weights a run uses: the files named on the command line, or the registry's for a model and release.

The registry (``registry.json``, versioned) maps each config and release to its official URL and to local copies
of official files (the shared data folder). Resolution looks first at what is on disk (local copies, then earlier
downloads), then downloads in release order. Offline and with nothing on disk, a performance run falls back to
randomly initialised weights, labelled ``random`` everywhere; an accuracy run refuses.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from requestflow.board.catalogue import FLOAT_BACKENDS, ModelConfig, width_text
from requestflow.board.download import DownloadError, cached_download_path, extract_member, fetch
from requestflow.board.files import sha256_file, shared_data_dir
from requestflow.errors import UserError

REGISTRY_PATH = Path(__file__).with_name("registry.json")
REGISTRY_VERSION = 1


class WeightsUnavailable(UserError):
    """No real weights for a model here: none on disk, and none downloadable. ``reason``: the first problem met."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_registry() -> dict:
    registry = json.loads(REGISTRY_PATH.read_text())
    if registry.get("registry_version") != REGISTRY_VERSION:
        raise UserError(f"{REGISTRY_PATH}: registry_version {registry.get('registry_version')!r}, "
                        f"this requestflow reads {REGISTRY_VERSION}")
    return registry


def releases() -> dict[str, dict]:
    return load_registry()["releases"]


def release_url(release: str, model: ModelConfig) -> str:
    spec = releases()[release]
    return spec["url"].format(**_placeholders(model))


_KERAS_ALPHA = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}


def _placeholders(model: ModelConfig) -> dict:
    return {"w": width_text(model.width), "w2": "1.0" if model.width == 1.0 else f"{model.width:.2f}",
            "keras_alpha": _KERAS_ALPHA[model.width], "r": model.resolution}


@dataclass
class ResolvedWeights:
    """Weights as the run uses them, with everything their identity needs."""

    paths: list[Path]
    format: str  # tflite, h5, checkpoint, canonical, random
    release: str | None = None
    origin: str = "file"  # file (named by the user), local (shared data), cache, download, random
    url: str | None = None
    _canonical: object = field(default=None, repr=False)

    @property
    def random(self) -> bool:
        return self.format == "random"

    @cached_property
    def sha256(self) -> str:
        if self.format in ("random", "canonical"):  # held as canonical tensors: their hash is the identity
            return self.canonical.sha256
        from requestflow.board.importers import source_sha256
        return source_sha256(self.paths)

    def canonical_for(self, model: ModelConfig):
        if self._canonical is None:
            from requestflow.board.importers import import_weights
            self._canonical = import_weights(self.paths, model, self.release)
        return self._canonical

    @property
    def canonical(self):
        if self._canonical is None:
            raise RuntimeError("canonical weights not loaded yet: call canonical_for(model)")
        return self._canonical

    @property
    def source_precision(self) -> str:
        if self.random:
            return "fp32"
        if self.format == "tflite":
            return _tflite_precision(self.paths)
        if self.format == "canonical":
            return self.canonical.source.get("precision", "fp32")
        return "fp32"

    def describe(self) -> dict:
        doc = {"sha256": self.sha256, "random": self.random, "format": self.format, "origin": self.origin,
               "source_precision": self.source_precision,
               "files": [str(p) for p in self.paths]}
        if self.release:
            doc["release"] = self.release
        if self.url:
            doc["url"] = self.url
        return doc


def _tflite_precision(paths: list[Path]) -> str:
    from requestflow.board.importers import tflite_interpreter_class
    interpreter_class, resolver = tflite_interpreter_class()
    for path in paths:
        interpreter = interpreter_class(model_path=str(path),
                                        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        dtype = interpreter.get_input_details()[0]["dtype"]
        if dtype in (np.int8, np.uint8):
            return np.dtype(dtype).name
    return "fp32"


def from_paths(paths: list[str], model: ModelConfig) -> ResolvedWeights:
    """Weights named on the command line. ``random`` asks for randomly initialised weights explicitly."""
    if paths == ["random"]:
        return random_resolved(model)
    from requestflow.board.importers import detect_format
    resolved = [Path(p) for p in paths]
    for p in resolved:
        if not p.exists() and not Path(f"{p}.index").is_file():
            raise UserError(f"weights file {p} does not exist")
    resolved_weights = ResolvedWeights(resolved, detect_format(resolved))
    if resolved_weights.format == "canonical":
        resolved_weights.canonical_for(model)
    return resolved_weights


def random_resolved(model: ModelConfig) -> ResolvedWeights:
    from requestflow.board.weights import random_weights
    return ResolvedWeights([], "random", origin="random", _canonical=random_weights(model))


def candidate_releases(backend: str, precision: str | None, release: str | None) -> list[str]:
    known = releases()
    if release is not None:
        if release not in known:
            raise UserError(f"unknown weights release {release!r}; known: {', '.join(known)}")
        return [release]
    if backend in FLOAT_BACKENDS:  # computing in float: float releases first, then dequantized quantized ones
        order = [r for r, s in known.items() if s["precision"] == "fp32"]
        order += [r for r, s in known.items() if s["precision"] != "fp32"]
    else:
        order = list(known)
    if precision is not None and backend not in FLOAT_BACKENDS:
        order = [r for r in order if known[r]["precision"] == precision]
        if not order:
            listing = ", ".join(f"{name} ({spec['precision']})" for name, spec in known.items())
            raise UserError(f"no weights release of precision {precision}; known: {listing}")
    return order


def local_files(model: ModelConfig, release: str, data: Path | None = None) -> list[Path] | None:
    """The shared data folder's copy of a release's files, verified by sha256; None when there is none.
    ``data`` is the folder to look in (default: ``shared_data_dir()``)."""
    data = data or shared_data_dir()
    if data is None:
        return None
    for entry in load_registry()["local"]:
        if entry["model"] != model.id or entry["release"] != release:
            continue
        paths = [data / f["path"] for f in entry["files"]]
        if not all(p.is_file() for p in paths):
            return None
        for path, f in zip(paths, entry["files"], strict=True):
            actual = sha256_file(path)
            if actual != f["sha256"]:
                raise UserError(f"sha256 mismatch for {path}: got {actual}, registry says {f['sha256']}")
        return paths
    return None


def _release_files(model: ModelConfig, release: str, download: bool) -> tuple[list[Path], str, str] | None:
    """(files, origin, url) of a release from the cache (or the network when ``download``)."""
    spec = releases()[release]
    url = release_url(release, model)
    if not download and not cached_download_path(url).is_file():
        return None
    archive = fetch(url)
    origin = "download" if download else "cache"
    if "member" not in spec:
        return [archive], origin, url
    members = extract_member(archive, spec["member"].format(**_placeholders(model)))
    if spec["format"] == "checkpoint":
        index = [m for m in members if m.name.endswith(".index")]
        if not index:
            raise UserError(f"{url}: archive has no checkpoint index")
        return [Path(str(index[0])[: -len(".index")])], origin, url
    return members, origin, url


def local_choice(model: ModelConfig, backend: str, precision: str | None = None, release: str | None = None,
                 data: Path | None = None) -> tuple[str, list[Path]] | None:
    """(release, files) of the shared data folder that ``resolve`` uses first; None when it holds none.
    ``data`` is the folder to look in (default: ``shared_data_dir()``): the controller asks which files a board
    needs with its own data folder."""
    for rel in candidate_releases(backend, precision, release):
        paths = local_files(model, rel, data)
        if paths:
            return rel, paths
    return None


def resolve(model: ModelConfig, backend: str, precision: str | None = None, release: str | None = None,
            allow_download: bool = True, allow_random: bool = False, data: Path | None = None,
            data_folder: bool = True) -> ResolvedWeights:
    """The registry's weights for ``model``: on disk first (the data folder ``data``, default
    ``shared_data_dir()``, unless ``data_folder`` is false; then the download cache), then downloaded, then (if
    allowed) random. Without any: ``WeightsUnavailable``."""
    order = candidate_releases(backend, precision, release)
    local = local_choice(model, backend, precision, release, data) if data_folder else None
    if local:
        return ResolvedWeights(local[1], releases()[local[0]]["format"], local[0], "local")
    for rel in order:
        found = _release_files(model, rel, download=False)
        if found:
            return ResolvedWeights(found[0], releases()[rel]["format"], rel, found[1], found[2])
    problems = []
    if allow_download and not os.environ.get("REQUESTFLOW_OFFLINE"):
        for rel in order:
            try:
                found = _release_files(model, rel, download=True)
            except DownloadError as exc:
                problems.append(str(exc))
                continue
            return ResolvedWeights(found[0], releases()[rel]["format"], rel, found[1], found[2])
    else:
        problems.append("downloads disabled (offline)")
    if allow_random:
        print(f"requestflow: WARNING: no real weights for {model.id} ({problems[0]}); using RANDOMLY INITIALISED "
              "weights, labelled random: performance only, no accuracy", file=sys.stderr)
        return random_resolved(model)
    raise WeightsUnavailable(f"no weights for {model.id} (releases tried: {', '.join(order)}; {problems[0]}); "
                             "pass --weights FILE, or put the shared data folder in $REQUESTFLOW_DATA", problems[0])
