"""The results store: PostgreSQL through SQLAlchemy 2, schema by Alembic (``sql/``), loaded from runner documents."""
