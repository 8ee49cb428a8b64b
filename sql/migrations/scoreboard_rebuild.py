"""The scoreboard's rebuild, shared by the migrations that change its live definition (0007, 0008, 0009).

pareto_frontier reads the materialized ``scoreboard``, which is ``SELECT * FROM scoreboard_live``: a new live
definition means dropping all three, then creating the live view, the materialized copy with its indexes, and the
frontier again.

Not a revision (Alembic reads revisions from ``versions/`` only) and not importable by name: Alembic loads each
migration from its file without putting this folder on ``sys.path``, whether it runs from ``requestflow db
upgrade`` (``requestflow.results.database.upgrade``), the tests or the ``alembic`` command. So a migration loads
this file by its path::

    _rebuild = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_rebuild.py"))
    rebuild_scoreboard, view_sql = _rebuild["rebuild_scoreboard"], _rebuild["view_sql"]

Changing what this runs changes what those migrations ran: keep the DDL as it is.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

VIEWS = Path(__file__).resolve().parents[1] / "views"


def view_sql(name: str) -> str:
    """The text of ``sql/views/<name>`` (e.g. ``scoreboard.v4.sql``)."""
    return (VIEWS / name).read_text()


def rebuild_scoreboard(live_sql: str, pareto_sql: str) -> None:
    """Replace the live scoreboard by ``live_sql`` (a ``CREATE VIEW scoreboard_live``), rebuild the materialized
    ``scoreboard`` and its indexes from it, and create ``pareto_frontier`` by ``pareto_sql``."""
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP MATERIALIZED VIEW scoreboard")
    op.execute("DROP VIEW scoreboard_live")
    op.execute(live_sql)
    op.execute("CREATE MATERIALIZED VIEW scoreboard AS SELECT * FROM scoreboard_live")
    op.execute("CREATE UNIQUE INDEX ux_scoreboard_point ON scoreboard (point_id)")
    op.execute("CREATE INDEX ix_scoreboard_board_latency ON scoreboard (board, latency_median_s)")
    op.execute("CREATE INDEX ix_scoreboard_sweep ON scoreboard (sweep)")
    op.execute(pareto_sql)
