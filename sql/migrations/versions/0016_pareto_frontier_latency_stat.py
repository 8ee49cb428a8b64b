"""pareto_frontier version 7 (issue #19): the latency statistic is a column, not a hard-coded median.

``sql/views/pareto_frontier.v7.sql`` computes version 6's frontiers on the median latency and again on the p90, each
row saying which (``latency_stat``: ``median`` or ``p90``; ``latency_s``, the statistic's value: new columns, last).
``WHERE latency_stat = 'median'`` gives version 6's rows, in its columns. The p90's frontier has its own partial
index, the median's twin (ix_scoreboard_frontier), so that its running maximum reads rows in order as the median's
does. The scoreboard table is unchanged; the view's privileges are energy_frontier's (SELECT for the reader and the
writer; ``database.upgrade`` grants again after every migration anyway). The downgrade goes back to version 6.

Revision ID: 0016
Revises: 0015
"""

import runpy
from pathlib import Path

from alembic import op

from requestflow.results.role_sql import READER, WRITER

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_table = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_table.py"))
view_sql, FRONTIER_P90_INDEX = _table["view_sql"], _table["FRONTIER_P90_INDEX"]


def _frontier(name: str) -> None:
    op.execute(view_sql(name))
    op.execute(f"REVOKE ALL ON TABLE pareto_frontier FROM {WRITER}")
    op.execute(f"GRANT SELECT ON TABLE pareto_frontier TO {READER}, {WRITER}")


def upgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute(FRONTIER_P90_INDEX)
    _frontier("pareto_frontier.v7.sql")


def downgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP INDEX ix_scoreboard_frontier_p90")
    _frontier("pareto_frontier.v6.sql")
