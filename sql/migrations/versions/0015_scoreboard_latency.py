"""scoreboard version 7 (issue #19): the p99 and the percentiles' confidence intervals and early-stopping p90.

``sql/views/scoreboard.v7.sql`` adds, after version 6's columns (unchanged, in their order), latency_p99_s, the
95% distribution-free intervals of the p50, p90 and p99, and LoadGen's early-stopping p90 estimate, as schema
version 2 documents carry them (performance.latency). The scoreboard stays 0013's maintained table, rebuilt here
from the new live text; ``energy_frontier`` reads it and is made again (v1, unchanged); pareto_frontier (v6) too.
The downgrade goes back to version 6.

Revision ID: 0015
Revises: 0014
"""

import runpy
from pathlib import Path

from alembic import op

from requestflow.results.role_sql import READER, WRITER

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_table = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_table.py"))
replace_table, view_sql = _table["replace_table"], _table["view_sql"]


def _with(live: str) -> None:
    op.execute("DROP VIEW energy_frontier")
    replace_table(view_sql(live), view_sql("pareto_frontier.v6.sql"))
    op.execute(view_sql("energy_frontier.v1.sql"))
    op.execute(f"REVOKE ALL ON TABLE energy_frontier FROM {WRITER}")
    op.execute(f"GRANT SELECT ON TABLE energy_frontier TO {READER}, {WRITER}")


def upgrade() -> None:
    _with("scoreboard.v7.sql")


def downgrade() -> None:
    _with("scoreboard.v6.sql")
