"""Boards in the results store: the figures the scoreboard's cost and energy columns need."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.load import keys_of_boards, update_scoreboard
from requestflow.results.models import Board

FIGURES = ("price_usd", "price_date", "service_life_years", "peak_power_w")


def set_board(engine: Engine, name: str, **figures) -> dict:
    """Create the board if needed, set the figures given (None leaves a figure as it is); the board's row."""
    changes = {key: value for key, value in figures.items() if value is not None}
    unknown = set(changes) - set(FIGURES)
    if unknown:
        raise UserError(f"unknown board figure {sorted(unknown)[0]!r}; known: {', '.join(FIGURES)}")
    for key in ("price_usd", "peak_power_w"):
        if key in changes and changes[key] < 0:
            raise UserError(f"--{key.replace('_', '-')} must not be negative, got {changes[key]}")
    if "service_life_years" in changes and changes["service_life_years"] <= 0:
        raise UserError(f"--service-life-years must be positive, got {changes['service_life_years']}")
    if "price_date" in changes:
        try:
            changes["price_date"] = dt.date.fromisoformat(changes["price_date"])
        except ValueError:
            raise UserError(f"--price-date {changes['price_date']!r}: expected YYYY-MM-DD") from None
    with engine.begin() as connection:
        connection.execute(insert(Board).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
        read_only = connection.execute(select(Board.read_only).where(Board.name == name)).scalar_one()
        if changes:
            if read_only:
                raise UserError(f"board {name!r} is a read-only reference board")
            connection.execute(update(Board).where(Board.name == name).values(**changes))
            update_scoreboard(connection, keys_of_boards(connection, [name]))  # its cost and energy columns
        row = connection.execute(select(Board.name, Board.kind, *(getattr(Board, f) for f in FIGURES),
                                        Board.read_only).where(Board.name == name)).one()
    return dict(row._mapping)


def record_platform(engine: Engine, name: str, kind: str, snapshot: dict) -> None:
    """Store what provisioning detected on a board (``info -> platform``, with when) and its kind (local, ssh)."""
    import json

    from sqlalchemy import text

    with engine.begin() as connection:
        connection.execute(insert(Board).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
        if connection.execute(select(Board.read_only).where(Board.name == name)).scalar_one():
            raise UserError(f"board {name!r} is a read-only reference board")
        connection.execute(update(Board).where(Board.name == name).values(kind=kind, info=text(
            "info || jsonb_build_object('platform', CAST(:snapshot AS jsonb), 'provisioned_at', now())"
        ).bindparams(snapshot=json.dumps(snapshot, sort_keys=True, default=str))))
