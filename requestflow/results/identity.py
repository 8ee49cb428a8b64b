"""Point identity: one canonical hash of a point's context, defined here once.

Resume, upsert, import and regression history all use ``point_id``. Two more keys group points:
``accuracy_key`` joins a performance point to the accuracy of the same configuration (accuracy does not depend on
threads, affinity, batch size or mode), and the results' own ``document_sha256`` makes loading idempotent.
"""

from __future__ import annotations

from requestflow.board.files import canonical_json, sha256_text

IDENTITY_VERSION = 1


def sha256_of(value) -> str:
    """SHA-256 of the canonical JSON of ``value`` (the one spelling used for every hash)."""
    return sha256_text(canonical_json(value))


def library_build(backend: dict) -> dict:
    """What identifies the library build a point ran on (ArmCL: its build's key and options), and the runtime spec
    its runner was installed for (``requestflow.board.runtime``), only when it had one: the identity of a point
    without one is what it always was."""
    build = {key: backend.get(key) for key in ("name", "library", "version", "build")}
    if backend.get("runtime"):
        build["runtime"] = backend["runtime"]
    return build


def identity(board: str, context: dict) -> dict:
    """The fields that make a point, taken from a result document's ``context``."""
    dataset = context["dataset"]
    return {
        "identity_version": IDENTITY_VERSION,
        "board": board,
        "backend": context["backend"]["name"],
        "variant": context["backend"].get("variant") or {},
        "library_build": library_build(context["backend"]),
        "model": context["model"]["id"],
        "precision": context["precision"],
        "weights_sha256": context["weights"]["sha256"],
        "dataset": "synthetic" if dataset.get("synthetic") else dataset["file_list_sha256"],
        "mode": context["mode"],
        "batch_size": context["batch_size"],
        "threads": context["threads"],
        "cpu_affinity": sorted(context["cpu_affinity"]),
        "preprocessing": context.get("preprocessing") or {},
    }


def point_id(board: str, context: dict) -> str:
    return sha256_of(identity(board, context))


def accuracy_key(board: str, context: dict) -> str:
    """The identity minus what accuracy does not depend on: mode, dataset, threads, affinity, batch size."""
    fields = identity(board, context)
    for key in ("mode", "dataset", "threads", "cpu_affinity", "batch_size"):
        fields.pop(key)
    return sha256_of(fields)
