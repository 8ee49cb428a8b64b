"""Throwaway databases on the tests' PostgreSQL server (``$REQUESTFLOW_TEST_POSTGRES``, default 127.0.0.1:5432).

A database with the results schema, or an Airflow metadata database, is a copy of a template that the session
migrated once (``CREATE DATABASE ... TEMPLATE``: some 0.1 s, where migrating costs 1-3 s for the results schema and
6 s for Airflow's); the tests that exercise the migrations themselves start from an empty database
(``schema=False``). PostgreSQL copies what is inside a database, not the database's own privileges (``datacl``):
``copy_database`` grants them again as migration 0011 does, and refuses a copy whose privileges still differ.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
ROOT = Path(__file__).resolve().parents[1]
_templates: dict[str, str] = {}  # kind ("results", "airflow") -> this process's template database


def _admin():
    from sqlalchemy import create_engine

    from requestflow.results.database import sqlalchemy_url

    return create_engine(sqlalchemy_url(f"{SERVER}/postgres"), isolation_level="AUTOCOMMIT")


def create_database(name: str, template: str | None = None) -> None:
    """CREATE DATABASE ``name``, empty or a copy of ``template`` (its privileges too: ``copy_database``)."""
    from sqlalchemy import text

    admin = _admin()
    try:
        with admin.connect() as connection:
            if template is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                copy_database(connection, template, name)
    finally:
        admin.dispose()


def copy_database(connection, template: str, name: str) -> None:
    """``name`` as a copy of ``template`` with the same database privileges (the REVOKE of migration 0011)."""
    from sqlalchemy import text

    connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    acl = "SELECT datacl::text[] FROM pg_database WHERE datname = :name"
    wanted = connection.execute(text(acl), {"name": template}).scalar()
    if wanted is not None:
        connection.execute(text(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC'))
    got = connection.execute(text(acl), {"name": name}).scalar()
    if sorted(got or []) != sorted(wanted or []):
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        raise RuntimeError(f"a copy of {template} has the database privileges {got}, the template {wanted}: a "
                           "migration changed a database's own privileges; tests/databases.py must grant it too")


def drop_database(name: str) -> None:
    from sqlalchemy import text

    admin = _admin()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def template(kind: str) -> str:
    """This process's template database of ``kind``: ``results`` (the results schema at the head of the
    migrations) or ``airflow`` (Airflow's metadata, ``airflow db migrate``), made on first use, dropped at exit."""
    if kind not in _templates:
        name = f"rf_test_template_{kind}_{uuid.uuid4().hex[:8]}"
        create_database(name)
        atexit.register(drop_database, name)
        if kind == "results":
            from requestflow.results.database import sqlalchemy_url, upgrade

            upgrade(sqlalchemy_url(f"{SERVER}/{name}"))
        elif kind == "airflow":
            with tempfile.TemporaryDirectory(prefix="rf-airflow-template-") as home:
                env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                       "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_url(name)}
                subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env,
                               check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
        else:
            raise ValueError(f"no template of kind {kind!r}")
        _templates[kind] = name
    return _templates[kind]


def airflow_url(name: str) -> str:
    """The SQLAlchemy URL Airflow's metadata database ``name`` is reached by (psycopg2, as Airflow wants it)."""
    return f"{SERVER.replace('postgresql://', 'postgresql+psycopg2://')}/{name}"


@contextlib.contextmanager
def throwaway_database(schema: bool = True) -> Iterator[str]:
    """A new database with the results schema (a copy of the session's template), or empty with ``schema=False``,
    dropped afterwards: its plain ``postgresql://`` URL (as an Airflow Connection or ``--db`` takes it)."""
    name = f"rf_test_{uuid.uuid4().hex[:12]}"
    create_database(name, template("results") if schema else None)
    try:
        yield f"{SERVER}/{name}"
    finally:
        drop_database(name)
