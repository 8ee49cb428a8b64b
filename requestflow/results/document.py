"""Is a runner document storable? Everything the loader checks before it writes, without a database.

``requestflow validate`` and the loader (``requestflow.results.load``) run the same ``check_document``: a file
that validates loads, or fails only for what a database alone can tell (the board is read-only, the server is
down). Pure Python (json, math, the board's schema module): no SQLAlchemy, so a board or a laptop can check its
files before sending them.

The checks, in order: the ``schema_version`` is known and older versions are upgraded (``UPGRADES``); JSON Schema
(``requestflow/board/result.schema.json``); then what the schema lets through but the store cannot hold:
- NaN and infinite numbers (JSON has neither; PostgreSQL's jsonb refuses them);
- NUL characters and lone surrogates in text (PostgreSQL refuses the first, UTF-8 cannot encode the second);
- timestamps ``datetime.fromisoformat`` cannot read (jsonschema checks ``format: date-time`` only where
  rfc3339-validator is installed);
- integers out of their column's range (``integer`` is 32-bit, ``bigint`` 64-bit) and prediction scores beyond
  ``real`` (float4): PostgreSQL would refuse the row halfway through a load.
"""

from __future__ import annotations

import copy as copy_module
import datetime as dt
import json
import math

from requestflow.errors import UserError, shown

CURRENT_SCHEMA_VERSION = 2


def _v1_to_v2(document: dict) -> dict:
    """Version 2 (issue #19) added ``performance.latency`` (percentiles with confidence intervals, early-stopping
    estimates), ``performance.profile``/``duration_s``, ``energy`` and ``cold_start``. A version 1 document gets its
    latency statistics, p90 and p99 recomputed from its raw samples (where it has them); it has no energy, cold start
    or profile (it was neither measured nor recorded). The store keeps and hashes the document as it was written
    (``requestflow.results.load``): this upgrade is what it reads from it."""
    document["schema_version"] = 2
    performance = document.get("performance")
    samples = performance.get("samples") if isinstance(performance, dict) else None
    if isinstance(samples, list) and samples and all(
            type(s) in (int, float) and math.isfinite(s) for s in samples):
        from requestflow.board.latency_stats import latency_statistics

        latency = latency_statistics(samples)
        performance["latency"] = latency
        performance["p90"], performance["p99"] = latency["p90"]["value"], latency["p99"]["value"]
    return document


# schema_version -> function upgrading a document of that version to the next one, so that every older document
# still loads.
UPGRADES: dict = {1: _v1_to_v2}

INT4 = 2**31 - 1
INT8 = 2**63 - 1
FLOAT4 = 3.4028234663852886e38
# (path, largest value): the document's integers that go into integer columns (requestflow.results.models);
# "*" is every item of a list. Their lower bounds are the schema's (minimum 0 or 1).
INTEGER_COLUMNS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("context", "batch_size"), INT4), (("context", "threads"), INT4), (("context", "cpu_affinity", "*"), INT4),
    (("context", "repetitions"), INT4), (("context", "warmup"), INT4),
    (("context", "model", "resolution"), INT4), (("context", "model", "macs"), INT8),
    (("context", "model", "params"), INT8), (("context", "dataset", "image_count"), INT4),
    (("performance", "n"), INT4), (("accuracy", "n"), INT4), (("accuracy", "failed_count"), INT4),
)


def upgrade_document(document: dict, source: str) -> dict:
    if not isinstance(document, dict):
        raise UserError(f"{source}: a result document is a JSON object, got {type(document).__name__}")
    version = document.get("schema_version")
    if not isinstance(version, int) or not (1 <= version <= CURRENT_SCHEMA_VERSION):
        raise UserError(f"{source}: unknown schema_version {shown(version)} (this requestflow loads 1.."
                        f"{CURRENT_SCHEMA_VERSION})")
    while version < CURRENT_SCHEMA_VERSION:
        document = UPGRADES[version](copy_module.deepcopy(document))
        version = document["schema_version"]
    return document


def check_document(document: dict, source: str) -> dict:
    """The document upgraded to the current schema version, or a UserError naming ``source`` and the field."""
    from requestflow.board.schema import validate_document

    document = upgrade_document(document, source)
    try:
        validate_document(document)
        _check_storable(document)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None
    return document


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _check_storable(document: dict) -> None:
    for key in ("started_at", "finished_at"):
        try:
            parse_time(document[key])
        except ValueError:
            raise UserError(f"field {key}: {shown(document[key])} is not an ISO 8601 date-time") from None
    for path, largest in INTEGER_COLUMNS:
        for where, value in _at(document, path):
            # JSON Schema's "integer" admits 3.0; a non-finite float is named by the check below
            if (type(value) is int or (type(value) is float and math.isfinite(value))) and value > largest:
                kind = "bigint" if largest == INT8 else "integer"
                raise UserError(f"field {where}: {value} is too large for the store (a {kind}, at most {largest})")
    for index, prediction in enumerate(document.get("predictions") or ()):
        for rank, (_, score) in enumerate(prediction["top5"]):
            if (type(score) is int or (type(score) is float and math.isfinite(score))) and abs(score) > FLOAT4:
                raise UserError(f"field predictions/{index}/top5/{rank}/1: {score} is beyond the store's real "
                                f"(float4) range")
    try:
        text = json.dumps(document, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        if "\\u0000" not in text:
            return
    except (ValueError, UnicodeEncodeError):
        pass
    stack: list[tuple[tuple, object]] = [((), document)]  # one C-speed pass above; the field is looked for here
    while stack:
        path, value = stack.pop()
        where = "/".join(map(str, path)) or "(document)"
        if isinstance(value, dict):
            for key, child in value.items():
                _check_text(key, f"{where} (a key)")
                stack.append(((*path, key), child))
        elif isinstance(value, list):
            stack.extend(((*path, index), child) for index, child in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"field {where}: {value} is not a finite number")
        elif isinstance(value, str):
            _check_text(value, where)


def _at(document, path: tuple[str, ...], prefix: tuple = ()):
    """(where, value) of every value at ``path`` ("*": each item of a list), skipping what is absent."""
    if not path:
        yield "/".join(map(str, prefix)), document
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(document, list):
            for index, item in enumerate(document):
                yield from _at(item, rest, (*prefix, index))
    elif isinstance(document, dict) and head in document:
        yield from _at(document[head], rest, (*prefix, head))


def _check_text(value, where: str) -> None:
    if not isinstance(value, str):
        return
    if "\x00" in value:
        raise UserError(f"field {where}: text with a NUL character, which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"field {where}: not valid Unicode ({exc.reason} at position {exc.start})") from None
