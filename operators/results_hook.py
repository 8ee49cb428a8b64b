"""ResultsHook: the results store, from the Airflow Connection ``requestflow_results`` (conn type postgres).

Without that Connection it falls back to requestflow's own resolution ($REQUESTFLOW_DATABASE_URL, else the
embedded PostgreSQL), so a local Airflow needs no set-up. The schema is brought to head on first use, with that
Connection's login (the owner's); everything else acts as ``requestflow_writer`` (``engine()``) or
``requestflow_reader`` (``reader_engine()``; through the Connection ``requestflow_results_reader`` when given).
See ``requestflow.results.roles`` and docs/security.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property

from airflow.sdk import BaseHook

from requestflow.results.database import CONN_ID, resolve_url, sqlalchemy_url, upgrade
from requestflow.results.roles import READER_CONN_ID, reader_url


class ResultsHook(BaseHook):
    conn_name_attr = "results_conn_id"
    default_conn_name = CONN_ID
    conn_type = "postgres"
    hook_name = "requestflow results store"

    def __init__(self, results_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.results_conn_id = results_conn_id

    @cached_property
    def url(self) -> str:
        try:
            conn = self.get_connection(self.results_conn_id)
        except Exception:  # AirflowNotFoundException and friends: no such Connection, use requestflow's default
            return resolve_url(None)[0]
        return sqlalchemy_url(conn.get_uri())

    @cached_property
    def reader(self) -> tuple[str, str] | None:
        """(URL, origin) of a separate reader login: the Connection ``requestflow_results_reader``, else
        $REQUESTFLOW_READER_DATABASE_URL; None: reads switch roles on ``url``'s login."""
        try:
            conn = self.get_connection(READER_CONN_ID)
        except Exception:  # no such Connection
            return reader_url(None)
        return sqlalchemy_url(conn.get_uri()), f"Airflow Connection {READER_CONN_ID}"

    def get_conn(self):
        """An engine acting as requestflow_writer, the schema brought to head first (as the owner)."""
        from requestflow.results.roles import writer_engine

        upgrade(self.url)
        return writer_engine(self.url)

    @contextmanager
    def engine(self):
        """The store's writer engine for a ``with`` block (schema brought to head first), disposed of at its end."""
        engine = self.get_conn()
        try:
            yield engine
        finally:
            engine.dispose()

    @contextmanager
    def reader_engine(self, timeout_s: float | None = None):
        """A reader engine (read-only, requestflow_reader, ``timeout_s`` per statement) for a ``with`` block."""
        from requestflow.results.roles import reader_engine

        upgrade(self.url)
        engine = reader_engine(self.url, self.reader, timeout_s)
        try:
            yield engine
        finally:
            engine.dispose()

    def load(self, documents: list[tuple[str, dict]], board: str, sweep: str | None, dag_id: str | None = None):
        from requestflow.results.load import load_documents

        with self.engine() as engine:
            return load_documents(engine, documents, board, sweep, dag_id)

    def record_failures(self, sweep: str, dag_id: str | None, board: str, points: list[dict],
                        error: BaseException, attempts: int) -> None:
        """Store points that will have no result document (``point_failures``), with the error that stopped them.
        Never raises: the task's own error matters more, so a store that cannot be reached is only logged."""
        from requestflow.results.sweeps import record_failure

        try:
            with self.engine() as engine:
                for point in points:
                    record_failure(engine, sweep, dag_id, board, point, type(error).__name__, str(error), attempts)
        except Exception as store_error:
            self.log.error("could not store the failure of %d point(s) of board %s: %s", len(points), board,
                           store_error)


@contextmanager
def user_errors_are_final():
    """A ``UserError`` (bad input: a missing folder, refused params, weights that cannot be had) fails the task at
    once as ``AirflowFailException``, with the same message: no retry can fix it. Anything else is left to Airflow's
    retries (an unreachable board, a lost connection, a killed runner)."""
    from airflow.sdk.exceptions import AirflowFailException

    from requestflow.errors import UserError

    try:
        yield
    except UserError as exc:
        raise AirflowFailException(str(exc)) from exc


def fail_points_on_last_attempt(operator, context, points: list[dict] | None, error: BaseException,
                                sweep: str | None = None) -> None:
    """What every board task does when it fails: on its last attempt (or a failure that no retry can change, an
    ``AirflowFailException``), the ``points`` that depended on it are stored in ``point_failures`` with ``error``,
    so that every point of a sweep ends in the store. ``operator`` has ``retries``, ``board_conn_id`` and
    ``results_conn_id``; ``sweep`` defaults to the run's id."""
    from airflow.sdk.exceptions import AirflowFailException

    ti = context.get("ti")
    final = isinstance(error, AirflowFailException) or ti is None or ti.try_number > operator.retries
    if not (final and points):
        return
    dag = context.get("dag")
    ResultsHook(operator.results_conn_id).record_failures(
        sweep or context.get("run_id") or operator.task_id, dag.dag_id if dag else None, operator.board_conn_id,
        list(points), error, attempts=ti.try_number if ti is not None else 1)
