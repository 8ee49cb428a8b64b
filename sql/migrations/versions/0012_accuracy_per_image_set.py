"""scoreboard version 5 and pareto_frontier version 6: accuracy belongs to its image set (issue #17).

Version 4 kept the latest accuracy of a configuration whatever its images: after tf 0.25_128's top-1 of 0.500 on
500 images, a 20-image check sweep left the scoreboard showing 0.45 on 20 images, plotted beside 500-image points
and used as other backends' reference. ``sql/views/scoreboard.v5.sql`` keeps the latest accuracy per configuration
AND image set (the dataset: its file list's sha256), so a configuration has one row per image set it was measured
on, with ``image_set`` and ``largest_image_set`` (what the page shows by default), and labels every backend's
variant (``graph``/``XLA``, ``XNNPACK``). tf's reference keeps its rule (same weights, precision, dataset, images),
now always found among rows of the same image set. ``sql/views/pareto_frontier.v6.sql`` compares rows of the same
board and image set only.

A performance point can now be on several rows (one per image set): the materialized scoreboard's unique index is
(point_id, image_set) instead of (point_id). The rebuild is written out here rather than through
``scoreboard_rebuild.py``, whose DDL (the old unique index) earlier migrations ran and must keep; the downgrade goes
back through it to version 4 and pareto_frontier version 5.

Revision ID: 0012
Revises: 0011
"""

import runpy
from pathlib import Path

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_rebuild = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_rebuild.py"))
rebuild_scoreboard, view_sql = _rebuild["rebuild_scoreboard"], _rebuild["view_sql"]


def upgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP MATERIALIZED VIEW scoreboard")
    op.execute("DROP VIEW scoreboard_live")
    op.execute(view_sql("scoreboard.v5.sql"))
    op.execute("CREATE MATERIALIZED VIEW scoreboard AS SELECT * FROM scoreboard_live")
    op.execute("CREATE UNIQUE INDEX ux_scoreboard_point_image_set ON scoreboard (point_id, image_set)")
    op.execute("CREATE INDEX ix_scoreboard_board_latency ON scoreboard (board, latency_median_s)")
    op.execute("CREATE INDEX ix_scoreboard_sweep ON scoreboard (sweep)")
    op.execute(view_sql("pareto_frontier.v6.sql"))


def downgrade() -> None:
    rebuild_scoreboard(view_sql("scoreboard.v4.sql"), view_sql("pareto_frontier.v5.sql"))
