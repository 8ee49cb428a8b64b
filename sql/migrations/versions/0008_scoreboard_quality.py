"""scoreboard version 3: every performance point's measurement verdict (VALID / FLAGGED and why).

The runner now writes ``performance.quality`` (``requestflow.board.quality``) into each performance document; the
results table already keeps the document, so no table changes: the live definition (``scoreboard_live``) becomes
``sql/views/scoreboard.v3.sql`` with ``quality`` and ``quality_reasons`` read from the performance result's
document (NULL for accuracy-only points and for documents written before the verdict), the materialized
``scoreboard`` is rebuilt from it with its indexes, and ``pareto_frontier`` (version 4) carries the new columns.

FLAGGED points stay on the Pareto frontier. MLPerf drops INVALID results because its conditions (minimum duration,
minimum queries) are rules a submitter meets by running longer; several of ours are facts about the board (a
governor that moved the clock, a SoC heating up, a thread bouncing between clusters) that the reader must see
beside the point rather than have it vanish - the seed's bimodal HiKey960 runs are that board's real behaviour.
Dropping them would also move the frontier whenever a check's limit is tuned, and make the view disagree with
the scoreboard page's frontier (``requestflow.results.plot.frontier``, held equal to this view by the tests). The
verdict is shown beside every row (page, CLI, sweep summary); ``WHERE quality IS DISTINCT FROM 'FLAGGED'`` gives
the stricter reading.

Revision ID: 0008
Revises: 0007
"""

import runpy
from pathlib import Path

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# the scoreboard's rebuild, shared with 0007-0009 (sql/migrations/scoreboard_rebuild.py: why it is loaded by path)
_rebuild = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scoreboard_rebuild.py"))
rebuild_scoreboard, view_sql = _rebuild["rebuild_scoreboard"], _rebuild["view_sql"]


def upgrade() -> None:
    rebuild_scoreboard(view_sql("scoreboard.v3.sql"), view_sql("pareto_frontier.v4.sql"))


def downgrade() -> None:
    rebuild_scoreboard(view_sql("scoreboard.v2.sql"), view_sql("pareto_frontier.v3.sql"))
