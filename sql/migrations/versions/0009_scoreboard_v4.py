"""scoreboard version 4: version 3's rows, REFRESHed in seconds rather than most of a minute at 50,000 configurations.

Every load refreshes the materialized ``scoreboard`` in its transaction. With scoreboard v2 and v3 (migrations 0007,
0008) that REFRESH took 42 s at 50,000 configurations (bench/bench_store.py; 1.4 s with v1): tf's reference top-1
was a self-join of the accuracy rows (``tf_reference``) that PostgreSQL, estimating one row per join key, ran as a
nested loop re-sorting the tf rows for every scoreboard row. ``sql/views/scoreboard.v4.sql`` takes it with a window
over the same rows (the latest tf row of the same weights, precision, dataset and image count), and reads each
result's document once (quality and the backend's notes were read from the TOASTed document once per use, several
times per row). Same columns, same rows (tests/results/test_scoreboard_v4.py compares v3 and v4 on tricky data);
``pareto_frontier`` (version 4) is unchanged, only recreated because it reads the materialized scoreboard.
On a busy machine the REFRESH went from 75.8 s (0008) to 3.5 s (0009) at 50,000 configurations (bench/README.md).

Revision ID: 0009
Revises: 0008
"""

import runpy
from pathlib import Path

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# the scoreboard's rebuild, shared with 0007-0009 (sql/migrations/scoreboard_rebuild.py: why it is loaded by path)
_rebuild = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_rebuild.py"))
rebuild_scoreboard, view_sql = _rebuild["rebuild_scoreboard"], _rebuild["view_sql"]


def upgrade() -> None:
    rebuild_scoreboard(view_sql("scoreboard.v4.sql"), view_sql("pareto_frontier.v4.sql"))


def downgrade() -> None:
    rebuild_scoreboard(view_sql("scoreboard.v3.sql"), view_sql("pareto_frontier.v4.sql"))
