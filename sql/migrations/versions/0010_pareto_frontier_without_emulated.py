"""pareto_frontier version 5: emulated performance points (quality 'EMULATED') take no part (issue #15).

An emulated run's latencies are the emulator's (qemu-user running arm64 code on this x86 machine): placed on a
frontier they would beat or hide the real measurements of the same board. ``sql/views/pareto_frontier.v5.sql`` is
version 4 with ``quality IS DISTINCT FROM 'EMULATED'`` among the candidates; the scoreboard is unchanged (its
quality column says EMULATED, with the emulator in quality_reasons).

Revision ID: 0010
Revises: 0009
"""

from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parents[2] / "views"


def upgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute((VIEWS / "pareto_frontier.v5.sql").read_text())


def downgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute((VIEWS / "pareto_frontier.v4.sql").read_text())
