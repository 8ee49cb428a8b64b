"""point_failures: the points of a sweep that left no result document (board unreachable, runner killed).

A runner that fails while running writes a document with ``status: failed``, stored in ``results``. A point whose
runner never wrote one (its board went away, the task was killed) had no trace in the store; the controller now
records it here once the task's retries are spent, so that a sweep's summary and users' SQL see every point.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "point_failures",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("board_id", sa.Integer(), nullable=False),
        sa.Column("point", JSONB(), nullable=False,
                  comment="the point as the sweep planned it (model, backend, mode...)"),
        sa.Column("error_type", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["board_id"], ["boards.id"], name=op.f("fk_point_failures_board_id_boards")),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name=op.f("fk_point_failures_sweep_id_sweeps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_point_failures")),
    )
    op.create_index(op.f("ix_point_failures_sweep_id"), "point_failures", ["sweep_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_point_failures_sweep_id"), table_name="point_failures")
    op.drop_table("point_failures")
