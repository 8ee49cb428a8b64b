"""Validation of result documents against ``result.schema.json`` (needs ``jsonschema``; boards do without it)."""

from __future__ import annotations

import json
from functools import lru_cache

from requestflow.board.runner import SCHEMA_PATH, SCHEMA_VERSION
from requestflow.errors import UserError, shown


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_document(document: dict) -> None:
    """Raise UserError naming the first offending field of an invalid document."""
    try:
        import jsonschema  # noqa: F401 - fail early and clearly where it is missing
    except ImportError:
        raise UserError("validating results needs jsonschema (pip install jsonschema)") from None
    if not isinstance(document, dict):
        raise UserError("a result document is a JSON object")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"schema_version {shown(document.get('schema_version'))}: this requestflow writes and "
                        f"validates version {SCHEMA_VERSION}")
    predictions = document.get("predictions")
    # The schema is applied to everything but the per-image predictions, which are checked by the loop below
    # against the same rules ($defs/prediction): jsonschema costs ~160 us per prediction, 8 s for 50,000.
    head = {**document, "predictions": []} if isinstance(predictions, list) else document
    validator = _validator()
    errors = sorted(validator.iter_errors(head), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "(document)"
        raise UserError(f"field {where}: {error.message}")
    if head is not document:
        _check_predictions(predictions)


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())


def _is_class(value) -> bool:
    return type(value) is int and 0 <= value <= 999


def _check_predictions(predictions: list) -> None:
    """The rules of ``$defs/prediction`` (file, label 0..999, top5 of 1..5 [class, score] pairs), fast."""
    for index, p in enumerate(predictions):
        where = f"field predictions/{index}"
        if type(p) is not dict:
            raise UserError(f"{where}: {shown(p)} is not of type 'object'")
        for key in ("file", "label", "top5"):
            if key not in p:
                raise UserError(f"{where}: '{key}' is a required property")
        if type(p["file"]) is not str:
            raise UserError(f"{where}/file: {shown(p['file'])} is not of type 'string'")
        if not _is_class(p["label"]):
            raise UserError(f"{where}/label: {shown(p['label'])} is not a class in 0..999")
        top5 = p["top5"]
        if type(top5) is not list or not 1 <= len(top5) <= 5:
            raise UserError(f"{where}/top5: expected 1 to 5 [class, score] pairs, got {shown(top5)}")
        for rank, pair in enumerate(top5):
            if (type(pair) is not list or len(pair) != 2 or not _is_class(pair[0])
                    or type(pair[1]) not in (int, float)):
                raise UserError(f"{where}/top5/{rank}: expected [class 0..999, score], got {shown(pair)}")
