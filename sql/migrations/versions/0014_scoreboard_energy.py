"""scoreboard version 6 and energy_frontier (issue #19): measured energy per inference beside the estimate.

Schema version 2 documents carry the board's power meter readings (``energy``: requestflow.board.power).
``sql/views/scoreboard.v6.sql`` adds, after version 5's columns (unchanged, in their order): energy_measured_j
(joules per inference, a valid measurement only), energy_above_idle_j, energy_meter, energy_invalid_reason, and
energy_j with energy_source: the measured figure where there is one, else the estimate energy_est_j (peak power x
median latency, which stays, labelled by energy_kind), and which of the two it is. ``energy_frontier`` (v1) is
pareto_frontier on (energy_j, top-1), measured and estimated rows never compared with each other.

The scoreboard stays the table of 0013, maintained by ``scoreboard_update`` (its keyed query is made from the new
live text): rebuilt here from the new live view, with its indexes, functions and privileges. pareto_frontier (v6)
is unchanged (its columns are listed). The downgrade goes back to version 5.

Revision ID: 0014
Revises: 0013
"""

import runpy
from pathlib import Path

from alembic import op

from requestflow.results.role_sql import READER, WRITER

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_table = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_table.py"))
replace_table, view_sql = _table["replace_table"], _table["view_sql"]


def upgrade() -> None:
    replace_table(view_sql("scoreboard.v6.sql"), view_sql("pareto_frontier.v6.sql"))
    op.execute(view_sql("energy_frontier.v1.sql"))
    op.execute(f"REVOKE ALL ON TABLE energy_frontier FROM {WRITER}")
    op.execute(f"GRANT SELECT ON TABLE energy_frontier TO {READER}, {WRITER}")


def downgrade() -> None:
    op.execute("DROP VIEW energy_frontier")
    replace_table(view_sql("scoreboard.v5.sql"), view_sql("pareto_frontier.v6.sql"))
