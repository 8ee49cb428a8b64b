"""Views scoreboard and pareto_frontier, version 1 (sql/views/*.v1.sql).

A view changes by a new file (*.v2.sql) and a new migration that drops the old view and creates the new one; a
migration never reads a file that a later change may edit.

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parents[2] / "views"


def upgrade() -> None:
    op.execute((VIEWS / "scoreboard.v1.sql").read_text())
    op.execute((VIEWS / "pareto_frontier.v1.sql").read_text())


def downgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP VIEW scoreboard")
