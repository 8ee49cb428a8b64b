"""scoreboard version 2: variant labels, accuracy checked against tf on the same weights, caveats.

The live definition (``scoreboard_live``) becomes ``sql/views/scoreboard.v2.sql``; the materialized ``scoreboard``
is rebuilt from it with its indexes, and ``pareto_frontier`` (version 3) carries the new columns.

Revision ID: 0007
Revises: 0006
"""

from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parents[2] / "views"


def _scoreboard(live_sql: str, pareto_sql: str) -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP MATERIALIZED VIEW scoreboard")
    op.execute("DROP VIEW scoreboard_live")
    op.execute(live_sql)
    op.execute("CREATE MATERIALIZED VIEW scoreboard AS SELECT * FROM scoreboard_live")
    op.execute("CREATE UNIQUE INDEX ux_scoreboard_point ON scoreboard (point_id)")
    op.execute("CREATE INDEX ix_scoreboard_board_latency ON scoreboard (board, latency_median_s)")
    op.execute("CREATE INDEX ix_scoreboard_sweep ON scoreboard (sweep)")
    op.execute(pareto_sql)


def upgrade() -> None:
    _scoreboard((VIEWS / "scoreboard.v2.sql").read_text(), (VIEWS / "pareto_frontier.v3.sql").read_text())


def downgrade() -> None:
    live_v1 = (VIEWS / "scoreboard.v1.sql").read_text().replace("CREATE VIEW scoreboard AS",
                                                                "CREATE VIEW scoreboard_live AS")
    _scoreboard(live_v1, (VIEWS / "pareto_frontier.v2.sql").read_text())
