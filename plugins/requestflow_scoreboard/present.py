"""How values look on the page: metrics in their display units, other cells as text."""

from __future__ import annotations

from requestflow.results.plot import METRICS


def cell(value, column: str) -> str:
    """A table cell: metrics in the unit of their header (ms, %, MB, ...), 4 significant digits."""
    if value is None:
        return ""
    if column in METRICS and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * METRICS[column].scale:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value) if column == "caveats" else ",".join(str(v) for v in value)
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
