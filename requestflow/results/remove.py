"""``requestflow rm``: remove results by filter (the seed's ``ck rm experiment --tags=...``).

What goes: the results matching every filter (board, model, backend, variant, ..., sweep, ``--since``/``--before``
on the time a result started) with what hangs on them (performance, raw samples, accuracy, per-image predictions,
errors, the regression detections of those results and the acknowledgements that named them), and the point
failures matching the filters that a failure records (board, model, backend, mode, sweep, time). What stays: the
dimension rows (boards, sweeps, models, weights, datasets, library builds, platform snapshots) and the points
themselves: a point (like a sweep) is an identity that a later load reuses, and deleting it would race with that
load (its result's foreign key would find the row gone); with no result it is on no view.

Decisions:

- **No filter, no removal**: removing everything is refused (drop the database for that).
- **What was counted is what goes**: :func:`plan` selects the result and failure ids (a read-only snapshot, its
  counts per table are what ``--dry-run`` prints and the confirmation shows); :func:`remove` deletes exactly those
  ids that still exist, in one transaction. A result loaded meanwhile, matching or not, is kept.
- **Read-only reference boards are never touched**: their results are imported published figures (``requestflow
  import-reference``); matches there are counted as kept and named.
- The scoreboard rows of the removed results' configurations are computed again in the same transaction
  (``load.update_scoreboard``: the same lock as loads, so a load committing meanwhile is on the scoreboard).
  ``pareto_frontier`` and ``regressions`` are plain views over it and the tables: they follow.
- An acknowledgement whose accepted result goes is removed, and the detections it acknowledged become
  unacknowledged again (counted as ``regression_detections (unacknowledged again)``): the baseline they were
  accepted against no longer exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.archive_export import chosen_filters as export_filters
from requestflow.results.archive_export import where_clause as export_where
from requestflow.results.archive_format import FAILURE_FILTERS, RESULT_FILTERS, RESULTS_FROM
from requestflow.results.load import keys_of_results, update_scoreboard

TIME_FILTERS = ("since", "before")
FILTERS = (*RESULT_FILTERS, *TIME_FILTERS)
# the tables whose rows hang on a result, in the order they are reported: (table, its column naming the result)
RESULT_TABLES = (("performance", "result_id"), ("samples", "result_id"), ("accuracy", "result_id"),
                 ("predictions", "result_id"), ("errors", "result_id"), ("regression_detections", "result_id"))
REACKED = "regression_detections (unacknowledged again)"


@dataclass
class Plan:
    """What ``requestflow rm`` would remove: ids, counts per table (``counts``), and the results of read-only boards
    that matched and are kept (``kept_read_only``: board -> results)."""

    filters: dict[str, list[str]]
    result_ids: list[int] = field(default_factory=list)
    failure_ids: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    kept_read_only: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.result_ids and not self.failure_ids

    def describe(self) -> str:
        """The counts per table, one a line, then what is kept."""
        width = max(len(name) for name in self.counts)
        lines = [f"  {name:<{width}}  {count:>9}" for name, count in self.counts.items()]
        lines += [f"  kept: {n} result(s) of the read-only reference board {board}"
                  for board, n in sorted(self.kept_read_only.items())]
        return "\n".join(lines)


def parse_filters(filters: Mapping[str, Iterable[str] | str | None]) -> dict[str, list[str]]:
    """The filters as lists of text (empty ones dropped); times as ISO instants (UTC unless they say otherwise).
    Refuses an unknown filter, a time given twice or not a time, and no filter at all."""
    unknown = [key for key in filters if key not in FILTERS]
    if unknown:
        raise UserError(f"unknown rm filter {unknown[0]!r}; known: {', '.join(FILTERS)}")
    # export's reading of filters, whose until is rm's before
    try:
        chosen = export_filters({("until" if key == "before" else key): values for key, values in filters.items()})
    except UserError as exc:
        raise UserError(str(exc).replace("--until", "--before")) from None
    chosen = {("before" if key == "until" else key): values for key, values in chosen.items()}
    if not chosen:
        raise UserError("requestflow rm needs at least one filter (--board, --model, --backend, --sweep, --before, "
                        "...): it does not remove every result")
    if "since" in chosen and "before" in chosen and chosen["since"][0] >= chosen["before"][0]:
        raise UserError(f"--since {chosen['since'][0]} is not before --before {chosen['before'][0]}: nothing "
                        "could match")
    return chosen


def _where(chosen: dict[str, list[str]], columns: Mapping[str, str], time_column: str) -> tuple[list[str], dict]:
    """SQL conditions (a list) and their parameters: export's, whose ``until`` is rm's ``before``."""
    renamed = {("until" if key == "before" else key): values for key, values in chosen.items()}
    where, parameters = export_where(renamed, columns, time_column)
    return [where.removeprefix("WHERE ")], parameters


def plan(engine: Engine, filters: Mapping[str, Iterable[str] | str | None]) -> Plan:
    """What the filters select, counted per table, from one read-only snapshot. Nothing is written."""
    chosen = parse_filters(filters)
    result = Plan(chosen)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        clauses, parameters = _where(chosen, RESULT_FILTERS, "r.started_at")
        rows = connection.execute(text(f"""
            SELECT r.id, b.name, b.read_only
            {RESULTS_FROM}
            WHERE {' AND '.join(clauses)}
            ORDER BY r.id"""), parameters).all()
        result.result_ids = [i for i, _, read_only in rows if not read_only]
        for _, board, read_only in rows:
            if read_only:
                result.kept_read_only[board] = result.kept_read_only.get(board, 0) + 1
        # point failures: only when every filter is one a failure records (a variant or a width needs a result)
        if set(chosen) <= set(FAILURE_FILTERS) | set(TIME_FILTERS):
            clauses, parameters = _where(chosen, FAILURE_FILTERS, "pf.failed_at")
            result.failure_ids = list(connection.execute(text(f"""
                SELECT pf.id FROM point_failures pf JOIN sweeps sw ON sw.id = pf.sweep_id
                JOIN boards b ON b.id = pf.board_id
                WHERE NOT b.read_only AND {' AND '.join(clauses)} ORDER BY pf.id"""), parameters).scalars())
        result.counts = _counts(connection, result.result_ids, result.failure_ids)
        connection.rollback()
    return result


def _counts(connection, result_ids: list[int], failure_ids: list[int]) -> dict[str, int]:
    """Rows per table that removing these results and failures removes (or changes)."""
    ids = {"ids": result_ids, "failures": failure_ids}
    counts = {"results": connection.execute(text("SELECT count(*) FROM results WHERE id = ANY(:ids)"), ids).scalar()}
    for table, column in RESULT_TABLES:
        counts[table] = connection.execute(text(f"SELECT count(*) FROM {table} WHERE {column} = ANY(:ids)"),
                                           ids).scalar()
    counts["regression_acks"] = connection.execute(text(
        "SELECT count(*) FROM regression_acks WHERE result_id = ANY(:ids)"), ids).scalar()
    counts[REACKED] = connection.execute(text(
        "SELECT count(*) FROM regression_detections d JOIN regression_acks a ON a.id = d.ack_id "
        "WHERE a.result_id = ANY(:ids) AND NOT d.result_id = ANY(:ids)"), ids).scalar()
    counts["point_failures"] = connection.execute(text(
        "SELECT count(*) FROM point_failures WHERE id = ANY(:failures)"), ids).scalar()
    return counts




def remove(engine: Engine, planned: Plan) -> dict[str, int]:
    """Delete what ``planned`` selected (those of its ids that still exist), in one transaction that also updates
    the scoreboard. The rows removed per table."""
    ids = {"ids": planned.result_ids, "failures": planned.failure_ids}
    with engine.begin() as connection:
        # the results first, locked: a regression detection or an acknowledgement being written for one of them
        # waits, or this waits for it, instead of a foreign key error halfway
        ids["ids"] = list(connection.execute(text("SELECT id FROM results WHERE id = ANY(:ids) ORDER BY id "
                                                  "FOR UPDATE"), ids).scalars())
        counts = _counts(connection, ids["ids"], ids["failures"])
        keys = keys_of_results(connection, ids["ids"])  # their configurations' scoreboard rows (points stay)
        connection.execute(text("DELETE FROM regression_detections WHERE result_id = ANY(:ids)"), ids)
        connection.execute(text(
            "UPDATE regression_detections SET ack_id = NULL WHERE ack_id IN "
            "(SELECT id FROM regression_acks WHERE result_id = ANY(:ids))"), ids)
        connection.execute(text("DELETE FROM regression_acks WHERE result_id = ANY(:ids)"), ids)
        # performance, samples, accuracy, predictions and errors go with their result (ON DELETE CASCADE)
        connection.execute(text("DELETE FROM results WHERE id = ANY(:ids)"), ids)
        connection.execute(text("DELETE FROM point_failures WHERE id = ANY(:failures)"), ids)
        update_scoreboard(connection, keys)
    return counts
