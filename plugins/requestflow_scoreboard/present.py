"""How values look on the page: metrics in their display units, other cells as text."""

from __future__ import annotations

from requestflow.board.quality import CHECKS
from requestflow.results.plot import METRICS

TEXT_LISTS = ("caveats", "quality_reasons")  # lists of sentences, joined with "; "


def cell(value, column: str) -> str:
    """A table cell: metrics in the unit of their header (ms, %, MB, ...), 4 significant digits."""
    if value is None:
        return ""
    if column in METRICS and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * METRICS[column].scale:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value) if column in TEXT_LISTS else ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def metric_value(value, column: str) -> str:
    """A metric with its unit, e.g. ``0.442 ms``."""
    if value is None:
        return "-"
    return f"{cell(value, column)} {METRICS[column].unit}" if column in METRICS else cell(value, column)


def header(column: str) -> str:
    if column in METRICS:
        return f"{column} ({METRICS[column].unit})"
    return column


def ordered_checks(checks: dict) -> list[tuple[str, dict]]:
    """A verdict's checks in the order the runner gives them (the store's jsonb does not keep key order), then any
    others by name."""
    known = [name for name in CHECKS if name in checks]
    return [(name, checks[name]) for name in known + sorted(set(checks) - set(known))]
