"""Alembic environment of the results store. Run through ``requestflow db upgrade`` (which sets the URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from requestflow.results.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


# tables the migrations make and SQL functions maintain, not models (the scoreboard: migration 0013)
MAINTAINED_TABLES = frozenset({"scoreboard"})


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Leave the maintained tables (and their indexes) out of ``alembic check``'s comparison with the models."""
    table = obj.table.name if type_ == "index" else name
    return not (reflected and compare_to is None and table in MAINTAINED_TABLES)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      compare_server_default=True, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
