"""Validation of result documents against ``result.schema.json`` (needs ``jsonschema``; boards do without it)."""

from __future__ import annotations

import json
from functools import lru_cache

from requestflow.board.runner import SCHEMA_PATH, SCHEMA_VERSION
from requestflow.errors import UserError


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_document(document: dict) -> None:
    """Raise UserError naming the first offending field of an invalid document."""
    try:
        import jsonschema
    except ImportError:
        raise UserError("validating results needs jsonschema (pip install jsonschema)") from None
    if not isinstance(document, dict):
        raise UserError("a result document is a JSON object")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"schema_version {document.get('schema_version')!r}: this requestflow writes and validates "
                        f"version {SCHEMA_VERSION}")
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "(document)"
        raise UserError(f"field {where}: {error.message}")
