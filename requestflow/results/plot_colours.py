"""The colours of the scoreboard's figures (:func:`requestflow.results.plot.scatter`): by backend, as the seed
notebook coloured them, or by library version (issue #17), as the seed's plots compared ArmCL releases."""

from __future__ import annotations

from requestflow.errors import UserError

BACKEND_COLOURS = {"tflite": "tab:orange", "tf": "tab:blue", "armcl": "tab:green"}
OTHER_COLOURS = ("tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
# what colours the marks (issue #17): the backend, or the library version (the library and its version, e.g.
# "armcl 24.11", the legend's names); "version" is an alias
COLOUR_BY = {"backend": "backend", "library_version": "library version"}
VERSION_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                   "tab:gray", "tab:olive", "tab:cyan")


def backend_colour(backend: str) -> str:
    if backend in BACKEND_COLOURS:
        return BACKEND_COLOURS[backend]
    return OTHER_COLOURS[sum(backend.encode()) % len(OTHER_COLOURS)]  # stable across requests and filters


def colour_by(name: str) -> str:
    """``backend`` or ``library_version`` (alias ``version``); anything else is a :class:`UserError`."""
    name = "library_version" if name == "version" else name
    if name not in COLOUR_BY:
        raise UserError(f"unknown colour {name!r}; known: {', '.join(COLOUR_BY)} (or version)")
    return name


def version_name(row: dict) -> str:
    """A row's library and version as the legend names it, e.g. ``armcl 24.11``."""
    return " ".join(str(v) for v in (row.get("library"), row.get("library_version")) if v) or "unknown version"


def _version_order(name: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in name.replace("-", ".").replace(" ", ".").split("."))


def colours(rows: list[dict], by: str) -> dict[str, str]:
    """Each colour key of ``rows`` (a backend, or a :func:`version_name`) -> its colour. Versions take the palette
    in their order (library, then version numbers as numbers), so the versions drawn never share a colour up to ten."""
    if by == "backend":
        return {b: backend_colour(b) for b in sorted({row["backend"] for row in rows})}
    names = sorted({version_name(row) for row in rows}, key=_version_order)
    return {name: VERSION_COLOURS[i % len(VERSION_COLOURS)] for i, name in enumerate(names)}


def colour_key(row: dict, by: str) -> str:
    return row["backend"] if by == "backend" else version_name(row)
