"""scoreboard version 2: variant labels, accuracy checked against tf on the same weights, caveats.

The live definition (``scoreboard_live``) becomes ``sql/views/scoreboard.v2.sql``; the materialized ``scoreboard``
is rebuilt from it with its indexes, and ``pareto_frontier`` (version 3) carries the new columns.

Revision ID: 0007
Revises: 0006
"""

import runpy
from pathlib import Path

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# the scoreboard's rebuild, shared with 0007-0009 (sql/migrations/scoreboard_rebuild.py: why it is loaded by path)
_rebuild = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_rebuild.py"))
rebuild_scoreboard, view_sql = _rebuild["rebuild_scoreboard"], _rebuild["view_sql"]


def upgrade() -> None:
    rebuild_scoreboard(view_sql("scoreboard.v2.sql"), view_sql("pareto_frontier.v3.sql"))


def downgrade() -> None:
    live_v1 = view_sql("scoreboard.v1.sql").replace("CREATE VIEW scoreboard AS", "CREATE VIEW scoreboard_live AS")
    rebuild_scoreboard(live_v1, view_sql("pareto_frontier.v2.sql"))
