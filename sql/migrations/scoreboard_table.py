"""The scoreboard as a table maintained per configuration (migration 0013, and any later live definition).

``scoreboard`` is a plain table holding exactly the rows of ``scoreboard_live``, with its columns in its order.
What changes it:

- ``scoreboard_update(keys text[])`` (SECURITY DEFINER: the writer role may run it, and may not write the table
  itself): the rows of the configurations ``keys`` (``points.accuracy_key``) are computed again from the live
  definition restricted to them (:func:`keyed_select`) and replace theirs; then the rows of other configurations
  whose tf reference top-1 this changed (the reference is the latest tf accuracy row of the same weights,
  precision, image set and image count, on any board) are computed again too. Its cost follows what changed, not
  the size of the store.
- ``refresh_scoreboard()``: every row again from ``scoreboard_live`` (a rebuild; what migration 0011's function of
  that name did as a REFRESH).

Both take the advisory lock ``SCOREBOARD_LOCK`` first, in a statement of its own: one maintenance at a time, and
each, being a VOLATILE function under READ COMMITTED, reads with snapshots taken after that lock was granted, so it
sees the rows of every maintenance that committed before it (the reason ``requestflow.results.load`` took the same
lock before its REFRESH).

Not a revision; loaded by path like ``scoreboard_rebuild.py`` (which says why).
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

from requestflow.results.role_sql import READER, SCOREBOARD_LOCK, WRITER

VIEWS = Path(__file__).resolve().parents[1] / "views"
INDEXES = (
    "CREATE UNIQUE INDEX ux_scoreboard_point_image_set ON scoreboard (point_id, image_set)",
    "CREATE INDEX ix_scoreboard_board_latency ON scoreboard (board, latency_median_s)",
    "CREATE INDEX ix_scoreboard_sweep ON scoreboard (sweep)",
    # the rows sharing a tf reference (acc.same_images of the live definition; image_set is the dataset's sha256)
    "CREATE INDEX ix_scoreboard_reference_group ON scoreboard (weights_sha256, precision, image_set, image_count) "
    "WHERE image_set IS NOT NULL",
    # and their references
    "CREATE INDEX ix_scoreboard_references ON scoreboard (weights_sha256, precision, image_set, image_count) "
    "WHERE accuracy_check = 'reference'",
    # pareto_frontier's rows in its window's order (v6): its running maximum reads them without a sort
    "CREATE INDEX ix_scoreboard_frontier ON scoreboard (board, image_set, latency_median_s, top1 DESC) "
    "WHERE NOT random_weights AND latency_median_s IS NOT NULL AND top1 IS NOT NULL "
    "AND quality IS DISTINCT FROM 'EMULATED'",
)
# pareto_frontier v7's frontier on the p90 (migration 0016): the same on latency_p90_s. :func:`create_table` makes it
# for a frontier whose text names it, so a later migration replacing the table with v7 (or a later v) keeps it
FRONTIER_P90_INDEX = (
    "CREATE INDEX ix_scoreboard_frontier_p90 ON scoreboard (board, image_set, latency_p90_s, top1 DESC) "
    "WHERE NOT random_weights AND latency_p90_s IS NOT NULL AND top1 IS NOT NULL "
    "AND quality IS DISTINCT FROM 'EMULATED'")
# The points read: those of the configurations $1, and those of the one configuration and image set that is the
# latest tf reference, among the other configurations, of each group (weights, precision, image set, image count)
# their accuracy points may fall in. The other configurations' rows in the table are current (every maintenance
# runs under the lock), so that row is the one the live view's window would put first among them; with the
# configurations $1 computed afresh beside it, the window picks what it picks over all points. So a load reads a
# few points whatever the store holds, not every tf point sharing the weights.
_CHOSEN = """WITH chosen AS (
    SELECT p.id FROM points p WHERE p.accuracy_key = ANY($1)
    UNION
    SELECT c.id
    FROM (SELECT DISTINCT p.weights_sha256, p.precision, d.sha256 AS image_set
          FROM points p JOIN datasets d ON d.id = p.dataset_id
          WHERE p.accuracy_key = ANY($1) AND p.mode = 'accuracy') g
    CROSS JOIN LATERAL (
        SELECT DISTINCT ON (s.image_count) o.accuracy_key, o.dataset_id
        FROM scoreboard s
        JOIN results r ON r.id = s.accuracy_result_id
        JOIN points o ON o.point_id = s.accuracy_point_id
        WHERE s.weights_sha256 = g.weights_sha256 AND s.precision = g.precision AND s.image_set = g.image_set
          AND s.accuracy_check = 'reference' AND o.accuracy_key <> ALL($1)
        ORDER BY s.image_count, r.started_at DESC, r.id DESC) best
    JOIN points c ON c.accuracy_key = best.accuracy_key AND c.dataset_id = best.dataset_id AND c.mode = 'accuracy'
),
latest AS ("""
# (the live definition's text, its keyed form): each must occur exactly once
_KEYED = (
    ("CREATE VIEW scoreboard_live AS\nWITH latest AS (", _CHOSEN),
    ("    FROM results r\n    WHERE r.status = 'ok'\n",
     "    FROM results r\n    WHERE r.status = 'ok' AND r.point_id IN (SELECT id FROM chosen)\n"),
    ("LEFT JOIN sweeps s ON s.id = m.sweep_id;", "LEFT JOIN sweeps s ON s.id = m.sweep_id\n"
                                                 "WHERE m.accuracy_key = ANY($1)"),
)


def view_sql(name: str) -> str:
    """The text of ``sql/views/<name>``."""
    return (VIEWS / name).read_text()


def keyed_select(live_sql: str) -> str:
    """The query of ``live_sql`` (a ``CREATE VIEW scoreboard_live``) for the configurations of ``$1`` (text[]):
    their rows exactly as the view has them. Only the points of those configurations and the tf points that can be
    their reference are read."""
    body = live_sql[live_sql.index("CREATE VIEW scoreboard_live AS"):]
    for old, new in _KEYED:
        if body.count(old) != 1:
            raise ValueError(f"the live scoreboard's text no longer has exactly one {old.strip()[:40]!r}: "
                             "sql/migrations/scoreboard_table.py keys it by that text")
        body = body.replace(old, new)
    if "$q$" in body:
        raise ValueError("the live scoreboard's text holds $q$, which quotes it here")
    return body


def functions_sql(live_sql: str) -> list[str]:
    """CREATE OR REPLACE of ``scoreboard_update(text[])`` and ``refresh_scoreboard()`` for ``live_sql``."""
    insert = f"$q$INSERT INTO scoreboard\n{keyed_select(live_sql)}$q$"
    # jit off: its statements read a few rows, but the planner's estimates for arrays and jsonb sets can pass
    # jit_above_cost, and compiling then costs ~90 ms per statement (bench/bench_store.py, part 4)
    update = f"""CREATE OR REPLACE FUNCTION scoreboard_update(chosen_keys text[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public SET jit = off AS $fn$
DECLARE
    touched jsonb;
    stale text[];
BEGIN
    PERFORM pg_advisory_xact_lock({SCOREBOARD_LOCK});
    IF chosen_keys IS NULL OR cardinality(chosen_keys) = 0 THEN
        RETURN 0;
    END IF;
    -- the reference groups of the rows replaced and of their replacements
    WITH gone AS (
        DELETE FROM scoreboard s USING points p
        WHERE p.accuracy_key = ANY(chosen_keys) AND s.point_id = p.point_id
        RETURNING s.weights_sha256, s.precision, s.image_set, s.image_count)
    SELECT jsonb_agg(DISTINCT jsonb_build_array(weights_sha256, precision, image_set, image_count))
    INTO touched FROM gone WHERE image_set IS NOT NULL;
    EXECUTE {insert} USING chosen_keys;
    SELECT COALESCE(touched, '[]') || COALESCE(jsonb_agg(DISTINCT jsonb_build_array(
               s.weights_sha256, s.precision, s.image_set, s.image_count)), '[]')
    INTO touched
    FROM scoreboard s JOIN points p ON p.point_id = s.point_id
    WHERE p.accuracy_key = ANY(chosen_keys) AND s.image_set IS NOT NULL;
    -- other configurations whose reference top-1 is no longer the latest tf row of their group
    WITH grp AS (
        SELECT DISTINCT e ->> 0 AS w, e ->> 1 AS pr, e ->> 2 AS images, (e ->> 3)::integer AS n
        FROM jsonb_array_elements(touched) AS e),
    reference AS (
        SELECT grp.*, (SELECT s.top1 FROM scoreboard s JOIN results r ON r.id = s.accuracy_result_id
                       WHERE s.weights_sha256 = grp.w AND s.precision = grp.pr AND s.image_set = grp.images
                         AND s.image_count = grp.n AND s.accuracy_check = 'reference'
                       ORDER BY r.started_at DESC, r.id DESC LIMIT 1) AS top1
        FROM grp)
    SELECT array_agg(DISTINCT p.accuracy_key) INTO stale
    FROM reference g
    -- a group's rows by its index, group by group (OFFSET 0: not flattened into a join scanning the table)
    CROSS JOIN LATERAL (
        SELECT s.point_id FROM scoreboard s
        WHERE s.weights_sha256 = g.w AND s.precision = g.pr AND s.image_set = g.images AND s.image_count = g.n
          AND s.reference_top1 IS DISTINCT FROM g.top1
        OFFSET 0) s
    JOIN points p ON p.point_id = s.point_id;
    IF stale IS NOT NULL THEN
        DELETE FROM scoreboard s USING points p WHERE p.accuracy_key = ANY(stale) AND s.point_id = p.point_id;
        EXECUTE {insert} USING stale;
    END IF;
    RETURN cardinality(chosen_keys) + COALESCE(cardinality(stale), 0);
END $fn$"""
    refresh = f"""CREATE OR REPLACE FUNCTION refresh_scoreboard() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock({SCOREBOARD_LOCK});
    DELETE FROM scoreboard;
    INSERT INTO scoreboard SELECT * FROM scoreboard_live;
END $fn$"""
    return [update, refresh]


def create_table(live_sql: str, pareto_sql: str) -> None:
    """With no ``pareto_frontier``, ``scoreboard`` or ``scoreboard_live``: the live view by ``live_sql``, the
    table filled from it with its indexes, the functions that maintain it, ``pareto_frontier`` by ``pareto_sql``."""
    op.execute(live_sql)
    op.execute("CREATE TABLE scoreboard AS SELECT * FROM scoreboard_live")
    for statement in INDEXES + ((FRONTIER_P90_INDEX,) if "ix_scoreboard_frontier_p90" in pareto_sql else ()):
        op.execute(statement)
    op.execute("ANALYZE scoreboard")
    for statement in functions_sql(live_sql):
        op.execute(statement)
    op.execute(pareto_sql)


def replace_table(live_sql: str, pareto_sql: str) -> None:
    """A later live definition (a migration after 0013): ``pareto_frontier``, the table and ``scoreboard_live``
    dropped, then :func:`create_table`, and the table's privileges as 0013 gave them (default privileges would give
    the writer more; the functions' are kept by CREATE OR REPLACE)."""
    op.execute("DROP VIEW pareto_frontier")
    op.execute("DROP TABLE scoreboard")
    op.execute("DROP VIEW scoreboard_live")
    create_table(live_sql, pareto_sql)
    op.execute(f"REVOKE ALL ON TABLE scoreboard FROM {WRITER}")
    op.execute(f"GRANT SELECT ON TABLE scoreboard TO {READER}, {WRITER}")
