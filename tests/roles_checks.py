"""What tests/results/test_roles.py and test_roles_embedded.py share: the attacks of issue #21, and what "nothing
written" means (no file where an attack aimed, the same rows in every table, no new relation or large object)."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
NOT_A_QUERY = "is not a query"

# name: (SQL with {file} and {oid}, what its refusal says)
ATTACKS = {
    "COPY TO a file": ("COPY results TO '{file}'", NOT_A_QUERY),
    "COPY TO PROGRAM": ("COPY results TO PROGRAM 'touch {file}'", NOT_A_QUERY),
    "COPY of a query TO a file": ("COPY (SELECT * FROM results) TO '{file}'", NOT_A_QUERY),
    "pg_read_file": ("SELECT pg_read_file('/etc/hostname')", "permission denied for function pg_read_file"),
    "pg_read_binary_file": ("SELECT pg_read_binary_file('/etc/hostname')",
                            "permission denied for function pg_read_binary_file"),
    "pg_ls_dir": ("SELECT pg_ls_dir('.')", "permission denied for function pg_ls_dir"),
    "lo_import": ("SELECT lo_import('/etc/hostname')", "permission denied for function lo_import"),
    "lo_export": ("SELECT lo_export({oid}, '{file}')", "permission denied for function lo_export"),
    "lo_from_bytea": ("SELECT lo_from_bytea(0, 'x')", "permission denied for function lo_from_bytea"),
    "CREATE TEMP TABLE": ("CREATE TEMP TABLE stolen AS SELECT * FROM results", NOT_A_QUERY),
    "SET ROLE postgres": ("SET ROLE postgres", NOT_A_QUERY),
    "RESET ROLE": ("RESET ROLE", NOT_A_QUERY),
    "SET SESSION AUTHORIZATION": ("SET SESSION AUTHORIZATION postgres", NOT_A_QUERY),
    "set_config('role')": ("SELECT set_config('role', 'postgres', false)", "permission denied for function set_config"),
    "set_config then a file, in one query": (
        "SELECT set_config('role', 'postgres', true), query_to_xml('SELECT pg_read_file(''/etc/hostname'')', true, "
        "true, '')", "permission denied for function set_config"),
    "UPDATE pg_settings (SET through a view)": ("UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'",
                                                "read-only transaction"),
    "a DO block": ("DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$", NOT_A_QUERY),
    "a second statement": ("SELECT 1; SET ROLE postgres", "one statement at a time"),
    "a comment hiding a second statement": ("SELECT ';' /* ; */; -- x\n RESET ROLE", "one statement at a time"),
}


@contextlib.contextmanager
def target_folder() -> Iterator[Path]:
    """A folder any server account could write into (so that an attack that worked would leave its file)."""
    folder = Path(tempfile.mkdtemp(prefix="rf-roles-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def attack_sql(name: str, folder: Path, oid: int) -> tuple[str, str, Path]:
    """(SQL, what its refusal says, the file it aims at)."""
    sql, refusal = ATTACKS[name]
    target = folder / f"{uuid.uuid4().hex}.out"
    return sql.format(file=target, oid=oid), refusal, target


def owner_large_object(owner_url: str) -> int:
    """A large object the owner made, for lo_export to aim at: its oid."""
    engine = create_engine(owner_url)
    with engine.begin() as connection:
        oid = connection.execute(text("SELECT lo_from_bytea(0, 'a secret')")).scalar_one()
    engine.dispose()
    return oid


def footprint(owner_url: str) -> dict:
    """What an attack might have written: the row count of every table, every relation (temporary ones too), the
    large objects."""
    engine = create_engine(owner_url)
    with engine.connect() as connection:
        tables = connection.execute(text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm') ORDER BY 1")).scalars().all()
        counts = {t: connection.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}
        relations = connection.execute(text("SELECT count(*) FROM pg_class")).scalar_one()
        large_objects = connection.execute(text("SELECT count(*) FROM pg_largeobject_metadata")).scalar_one()
    engine.dispose()
    return {"rows": counts, "relations": relations, "large_objects": large_objects}


def one_line_error(call) -> str:
    """The message of the error ``call()`` raises, which must be one line; a call that does not raise fails."""
    try:
        call()
    except Exception as exc:
        return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    raise AssertionError("the attack was not refused")


def plugins_on_path() -> None:
    import sys

    if str(ROOT / "plugins") not in sys.path:
        sys.path.insert(0, str(ROOT / "plugins"))


@contextlib.contextmanager
def page_engine() -> Iterator:
    """The scoreboard page's own engine (``results_engine``), made afresh from the environment and dropped after."""
    plugins_on_path()
    from requestflow_scoreboard import app

    app._engine = None
    try:
        engine = app.results_engine()
        yield engine
    finally:
        if app._engine is not None:
            app._engine.dispose()
        app._engine = None


def run_on(engine, sql: str):
    """Run ``sql`` as the page's code runs its queries: a SQLAlchemy execution on the engine."""
    with engine.connect() as connection:
        return connection.exec_driver_sql(sql).fetchall()

