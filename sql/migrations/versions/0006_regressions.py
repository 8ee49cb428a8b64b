"""Regression detection: regression_detections, regression_acks and the view regressions (sql/views/regressions.v1.sql).

Each result of a sweep is compared with its point's own history (``requestflow.results.regressions``); a change is
stored once per result and metric (the unique index makes detecting twice a no-op). An acknowledgement accepts a
result's level as the point's new normal for a metric: later detections compare from that result on. The table is
``regression_detections`` because plain-SQL users read the view ``regressions`` (names instead of ids).

Revision ID: 0006
Revises: 0005
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parents[2] / "views"
METRIC_KNOWN = "metric IN ('latency', 'top1', 'top5')"


def upgrade() -> None:
    op.create_table(
        "regression_acks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("point_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False, comment="latency, top1 or top5"),
        sa.Column("result_id", sa.BigInteger(), nullable=False,
                  comment="the accepted result: later results are compared from it on"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("acknowledged_by", sa.Text(), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(METRIC_KNOWN, name=op.f("ck_regression_acks_metric_known")),
        sa.CheckConstraint("length(btrim(reason)) > 0", name=op.f("ck_regression_acks_reason_given")),
        sa.ForeignKeyConstraint(["point_id"], ["points.id"], name=op.f("fk_regression_acks_point_id_points")),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name=op.f("fk_regression_acks_result_id_results")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regression_acks")),
    )
    op.create_index(op.f("ix_regression_acks_point_id"), "regression_acks", ["point_id"])
    op.create_index("ux_regression_acks_point_metric_result", "regression_acks", ["point_id", "metric", "result_id"],
                    unique=True)
    op.create_table(
        "regression_detections",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("point_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.BigInteger(), nullable=False, comment="the new result"),
        sa.Column("metric", sa.Text(), nullable=False, comment="latency, top1 or top5"),
        sa.Column("change", sa.Text(), nullable=False,
                  comment="slower or faster (latency), lower or higher (accuracy)"),
        sa.Column("baseline_result_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False,
                  comment="the earlier results of the point compared with"),
        sa.Column("old_value", sa.Float(), nullable=False,
                  comment="baseline: median seconds of the pooled samples, or top-k"),
        sa.Column("new_value", sa.Float(), nullable=False),
        sa.Column("ratio", sa.Float(), nullable=True, comment="new_value / old_value"),
        sa.Column("p_value", sa.Float(), nullable=True, comment="two-sided Mann-Whitney U; none for accuracy"),
        sa.Column("n_old", sa.Integer(), nullable=True, comment="samples (latency) or images (accuracy) compared"),
        sa.Column("n_new", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True,
                  comment="the minimum relative effect applied: max(min_effect, the baseline's run-to-run spread)"),
        sa.Column("detected_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("ack_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("change IN ('slower', 'faster', 'lower', 'higher')",
                           name=op.f("ck_regression_detections_change_known")),
        sa.CheckConstraint(METRIC_KNOWN, name=op.f("ck_regression_detections_metric_known")),
        sa.ForeignKeyConstraint(["ack_id"], ["regression_acks.id"],
                                name=op.f("fk_regression_detections_ack_id_regression_acks")),
        sa.ForeignKeyConstraint(["point_id"], ["points.id"], name=op.f("fk_regression_detections_point_id_points")),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"],
                                name=op.f("fk_regression_detections_result_id_results")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regression_detections")),
    )
    op.create_index(op.f("ix_regression_detections_ack_id"), "regression_detections", ["ack_id"])
    op.create_index(op.f("ix_regression_detections_point_id"), "regression_detections", ["point_id"])
    op.create_index("ux_regression_detections_result_metric", "regression_detections", ["result_id", "metric"],
                    unique=True)
    op.execute((VIEWS / "regressions.v1.sql").read_text())


def downgrade() -> None:
    op.execute("DROP VIEW regressions")
    op.drop_table("regression_detections")
    op.drop_table("regression_acks")
