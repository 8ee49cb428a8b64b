"""Where the results database is, and its schema.

In order: ``--db URL``; ``$REQUESTFLOW_DATABASE_URL``; the Airflow Connection ``requestflow_results`` (from
``$AIRFLOW_CONN_REQUESTFLOW_RESULTS``, or Airflow's own lookup where Airflow is installed); else the embedded
PostgreSQL that requestflow starts in its state folder. PostgreSQL only: one SQL dialect everywhere.

That URL's login is the store's owner: it runs the migrations (``upgrade``). Reads and writes act as the roles
requestflow_reader and requestflow_writer that migration 0011 makes (``requestflow.results.roles``).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

from requestflow.errors import UserError

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
CONN_ID = "requestflow_results"
ROLES_REVISION = 11  # the migration that made requestflow_reader and requestflow_writer (requestflow.results.roles)


def sqlalchemy_url(url: str) -> str:
    """Any PostgreSQL URL (``postgres://``, ``postgresql://``, ``postgresql+psycopg://``) -> psycopg 3's."""
    try:
        parsed = make_url(url)
    except Exception:
        raise UserError(f"not a database URL: {_redact(url)!r}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise UserError(f"the results store is PostgreSQL only; got a {parsed.get_backend_name()!r} URL")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def connection_url_from_env(conn_id: str = CONN_ID) -> str | None:
    """The URL of the Airflow Connection ``conn_id`` given as ``$AIRFLOW_CONN_<ID>`` (a URI or Airflow's JSON)."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if raw:
        if raw.lstrip().startswith("{"):
            conn = json.loads(raw)
            user = conn.get("login") or ""
            password = f":{conn['password']}" if conn.get("password") else ""
            auth = f"{user}{password}@" if user else ""
            port = f":{conn['port']}" if conn.get("port") else ""
            return f"postgresql://{auth}{conn.get('host', '')}{port}/{conn.get('schema') or 'postgres'}"
        return raw
    return None


def resolve_url(explicit: str | None = None) -> tuple[str, str]:
    """(SQLAlchemy URL, where it came from)."""
    if explicit:
        return sqlalchemy_url(explicit), "--db"
    if os.environ.get("REQUESTFLOW_DATABASE_URL"):
        return sqlalchemy_url(os.environ["REQUESTFLOW_DATABASE_URL"]), "REQUESTFLOW_DATABASE_URL"
    airflow = connection_url_from_env()
    if airflow:
        return sqlalchemy_url(airflow), f"Airflow Connection {CONN_ID}"
    from requestflow.results.embedded import embedded_url
    return sqlalchemy_url(embedded_url()), "embedded PostgreSQL"


def engine_for(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str, connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SQL_DIR / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest migration's revision. Read once per process: Alembic imports every migration file to find it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def upgrade(url: str, revision: str = "head", engine: Engine | None = None) -> None:
    """Bring the database at ``url`` (through ``engine`` when given, which stays open) to ``revision``. A database
    already at the head costs one query: every stored point checks this (bench/bench_sweep.py)."""
    from alembic import command

    own = engine is None
    engine = engine_for(url) if own else engine
    try:
        with engine.begin() as connection:
            before = connection.exec_driver_sql("SELECT version_num FROM alembic_version" if _has_version_table(
                connection) else "SELECT NULL").scalar()
            if revision == "head" and before == head_revision():
                return
            command.upgrade(alembic_config(url, connection), revision)
            after = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            if before != after and after is not None and int(after) >= 4 and connection.exec_driver_sql(
                    "SELECT relkind = 'm' FROM pg_class WHERE oid = 'scoreboard'::regclass").scalar():
                # rows stored before the upgrade (from 0013 on, a table the migration filled)
                connection.exec_driver_sql("REFRESH MATERIALIZED VIEW scoreboard")
            if before != after and after is not None and int(after) >= ROLES_REVISION:
                _grant_roles(connection)  # what a migration after 0011 (re)created
    finally:
        if own:
            engine.dispose()


def _grant_roles(connection) -> None:
    from sqlalchemy import text

    from requestflow.results.role_sql import grants_sql

    for statement in grants_sql():
        connection.execute(text(statement))


def _has_version_table(connection) -> bool:
    return connection.exec_driver_sql("SELECT to_regclass('alembic_version') IS NOT NULL").scalar()


def check(url: str) -> None:
    """Raise if the models and the migrations differ (``alembic check``)."""
    from alembic import command

    engine = engine_for(url)
    with engine.connect() as connection:
        command.check(alembic_config(url, connection))
    engine.dispose()
