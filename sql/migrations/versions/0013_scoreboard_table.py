"""The scoreboard becomes a table maintained per configuration (issue #20): storing a point costs the same at 10
or 1,000,000 stored points.

Since 0004 every load (and board change, and ``requestflow rm``) REFRESHed the materialized ``scoreboard`` in its
transaction: 2.4-3.5 s at 50,000 configurations, growing with everything stored before. ``scoreboard`` is now a
table with the same columns and rows, filled here from ``scoreboard_live`` (scoreboard v5, unchanged), and kept
equal to it by ``scoreboard_update(keys)``, which computes again only the rows of the configurations a load, a
board change or a removal touched, and those whose tf reference accuracy that changed
(``sql/migrations/scoreboard_table.py`` says how). ``refresh_scoreboard()`` rebuilds the whole table.
``pareto_frontier`` (v6) is unchanged, recreated because it reads the scoreboard.

Privileges (migration 0011's least privilege): the writer gets EXECUTE on ``scoreboard_update(text[])`` and nothing
on the table but SELECT (the function, SECURITY DEFINER, writes it as the owner); the reader SELECT, as before.
An index on points (weights, precision, dataset) finds the tf points that can be a configuration's reference.

The downgrade goes back to 0012's materialized view, refreshed from the same live view.

Revision ID: 0013
Revises: 0012
"""

import runpy
from pathlib import Path

from alembic import op

from requestflow.results.role_sql import READER, WRITER

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_table = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_table.py"))
create_table, view_sql = _table["create_table"], _table["view_sql"]

POINTS_INDEX = "ix_points_reference_group"


def upgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP MATERIALIZED VIEW scoreboard")
    op.execute("DROP VIEW scoreboard_live")
    op.execute(f"CREATE INDEX {POINTS_INDEX} ON points (weights_sha256, precision, dataset_id)")
    create_table(view_sql("scoreboard.v5.sql"), view_sql("pareto_frontier.v6.sql"))
    op.execute(f"REVOKE ALL ON TABLE scoreboard FROM {WRITER}")
    op.execute(f"GRANT SELECT ON TABLE scoreboard TO {READER}, {WRITER}")
    op.execute("REVOKE ALL ON FUNCTION scoreboard_update(text[]) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION scoreboard_update(text[]) TO {WRITER}")


def downgrade() -> None:
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP TABLE scoreboard")
    op.execute("DROP FUNCTION scoreboard_update(text[])")
    op.execute(f"DROP INDEX {POINTS_INDEX}")
    # as 0012 made them, from scoreboard_live (v5, which stays)
    op.execute("CREATE MATERIALIZED VIEW scoreboard AS SELECT * FROM scoreboard_live")
    op.execute("CREATE UNIQUE INDEX ux_scoreboard_point_image_set ON scoreboard (point_id, image_set)")
    op.execute("CREATE INDEX ix_scoreboard_board_latency ON scoreboard (board, latency_median_s)")
    op.execute("CREATE INDEX ix_scoreboard_sweep ON scoreboard (sweep)")
    op.execute(view_sql("pareto_frontier.v6.sql"))
    op.execute(f"REVOKE ALL ON TABLE scoreboard FROM {WRITER}")  # what default privileges gave a new relation
    op.execute(f"GRANT SELECT ON TABLE scoreboard TO {READER}, {WRITER}")
    # as 0011 made it (its ACL is kept by CREATE OR REPLACE)
    op.execute("""CREATE OR REPLACE FUNCTION refresh_scoreboard() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
                  SET search_path = pg_catalog, public
                  AS $$ BEGIN REFRESH MATERIALIZED VIEW public.scoreboard; END $$""")
