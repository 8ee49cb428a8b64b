"""Throwaway databases on the tests' PostgreSQL server (``$REQUESTFLOW_TEST_POSTGRES``, default 127.0.0.1:5432)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

SERVER = os.environ.get("REQUESTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def throwaway_database(schema: bool = True) -> Iterator[str]:
    """A new, empty database (with the results schema unless ``schema=False``), dropped afterwards: its plain
    ``postgresql://`` URL (as an Airflow Connection or ``--db`` takes it)."""
    from sqlalchemy import create_engine, text

    from requestflow.results.database import sqlalchemy_url, upgrade

    name = f"rf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqlalchemy_url(f"{SERVER}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        if schema:
            upgrade(sqlalchemy_url(f"{SERVER}/{name}"))
        yield f"{SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
