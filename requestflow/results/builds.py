"""Library builds made by requestflow (ArmCL, built on a board) in the results store: one ``library_builds`` row per
build, keyed by the build's cache key, with its provenance (version, source sha256 or git commit, compiler and
version, the full option list, build time, library files and sizes) in ``info``."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.models import LibraryBuild

PROVENANCE_FIELDS = ("key", "version", "source", "compiler", "options", "build_seconds", "libraries",
                     "library_bytes")


def record_build(engine: Engine, provenance: dict, board: str | None = None, backend: str = "armcl",
                 library: str = "arm_compute") -> int:
    """Store a build's provenance (``build.json`` of ``requestflow.board.armcl``); the row's id. Idempotent: a
    build reused from a board's cache, or built again with the same key, keeps the row of its first record
    (the key says the two are the same build)."""
    missing = [name for name in PROVENANCE_FIELDS if provenance.get(name) is None]
    if missing:
        raise UserError(f"build provenance without {', '.join(missing)}")
    info = {key: value for key, value in provenance.items() if key not in ("reused", "status")}
    if board is not None:
        info["board"] = board
    with engine.begin() as connection:
        connection.execute(insert(LibraryBuild).values(
            sha256=provenance["key"], backend=backend, library=library, version=provenance["version"], info=info,
        ).on_conflict_do_nothing(index_elements=["sha256"]))
        return connection.execute(select(LibraryBuild.id).where(LibraryBuild.sha256 == provenance["key"])
                                  ).scalar_one()


def stored_build(engine: Engine, key: str) -> dict | None:
    """The stored row of a build key: ``{"id", "backend", "library", "version", "info"}``, or None."""
    with engine.connect() as connection:
        row = connection.execute(select(LibraryBuild.id, LibraryBuild.backend, LibraryBuild.library,
                                        LibraryBuild.version, LibraryBuild.info)
                                 .where(LibraryBuild.sha256 == key)).one_or_none()
    return dict(row._mapping) if row is not None else None
