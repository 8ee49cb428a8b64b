"""The local Airflow's home: its environment, ``airflow.cfg``, its metadata database (created and migrated when
needed) and one pool per board, made ready by ``prepare``.

The local Airflow lives in requestflow's state folder (``<state>/airflow`` is its ``AIRFLOW_HOME``), reads the DAGs
of this checkout, keeps its metadata in the database ``airflow`` of the embedded PostgreSQL (the results stay in
their own database, ``postgres``, of the same server) or in the PostgreSQL given by ``--airflow-db URL`` /
``$REQUESTFLOW_AIRFLOW_DATABASE_URL``; never SQLite. ``requestflow airflow-env`` prints the same environment as
``export`` lines (``exports``), for ``airflow standalone`` and friends.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from operators.config import ROOT, inventory, pool_name
from requestflow.errors import UserError

METADATA_DATABASE = "airflow"
METADATA_ENV = "REQUESTFLOW_AIRFLOW_DATABASE_URL"
STAMP = ".requestflow-migrated"  # in AIRFLOW_HOME: what `airflow db migrate` last brought to head
POOL_DESCRIPTION = "requestflow: one point at a time on board {board}"


def airflow_home(state: Path | None = None) -> Path:
    if state is None:
        from requestflow.results.embedded import state_dir
        state = state_dir()
    return Path(state) / "airflow"


def airflow_binary() -> str:
    path = Path(sys.executable).with_name("airflow")
    if not path.is_file():
        raise UserError(f"Airflow is not installed beside {sys.executable}: pip install 'requestflow[controller]'")
    return str(path)


def airflow_url(url: str) -> str:
    """Any PostgreSQL URL -> the one Airflow's metadata uses (psycopg2 driver). Anything else is refused."""
    from sqlalchemy.engine import URL, make_url

    try:
        parsed = make_url(url)
    except Exception:
        raise UserError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise UserError(f"Airflow's metadata is PostgreSQL only here (never SQLite); got a "
                        f"{parsed.get_backend_name()!r} URL")
    if not parsed.database:
        raise UserError(f"the Airflow metadata URL names no database: {shown(url)}")
    if parsed.password == "":  # the embedded server's URLs carry an empty one (trust authentication)
        parsed = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database,
                            parsed.query)
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def metadata_url(explicit: str | None = None) -> tuple[str, str]:
    """(Airflow's metadata URL, where it came from): ``--airflow-db``, ``$REQUESTFLOW_AIRFLOW_DATABASE_URL``, else
    the database ``airflow`` of the embedded PostgreSQL (started when needed)."""
    if explicit:
        return airflow_url(explicit), "--airflow-db"
    if os.environ.get(METADATA_ENV):
        return airflow_url(os.environ[METADATA_ENV]), METADATA_ENV
    from sqlalchemy.engine import make_url

    from requestflow.results.embedded import embedded_url
    url = make_url(embedded_url()).set(database=METADATA_DATABASE).render_as_string(hide_password=False)
    return airflow_url(url), f"embedded PostgreSQL, database {METADATA_DATABASE}"


def ensure_database(url: str) -> bool:
    """Create the URL's database on its server when it is missing; True when created."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=15) as connection:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone():
                return False
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parsed.database)))
            return True
    except psycopg.Error as exc:
        raise UserError(f"cannot create the Airflow metadata database {shown(url)}: "
                        f"{str(exc).strip().splitlines()[0]}") from None


def connection_uri(url: str) -> str:
    """A results-store SQLAlchemy URL as an Airflow Connection URI (``AIRFLOW_CONN_REQUESTFLOW_RESULTS``)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def environment(metadata: str, results: str | None = None, state: Path | None = None) -> dict[str, str]:
    """The variables of requestflow's local Airflow (only those; run with ``{**os.environ, **environment(...)}``).

    ``metadata`` is Airflow's metadata URL (PostgreSQL), ``results`` the results store's (given to the tasks as
    the Connection ``requestflow_results``, so that they and the CLI read the same store)."""
    from requestflow.results.embedded import state_dir

    state = Path(state) if state is not None else state_dir()
    cores = os.cpu_count() or 2
    python_path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    env = {
        "AIRFLOW_HOME": str(airflow_home(state)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),  # the scoreboard page
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_url(metadata),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # a small machine: as many task processes as cores (a board's own pool still runs one point at a time)
        "AIRFLOW__CORE__PARALLELISM": str(max(2, cores)),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(2, cores)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",  # the UI of a local Airflow listens on this machine only
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "REQUESTFLOW_STATE": str(state),
        "PYTHONPATH": os.pathsep.join(python_path),
        "PATH": path if venv_bin in path.split(os.pathsep) else f"{venv_bin}{os.pathsep}{path}",
    }
    if results:
        env["AIRFLOW_CONN_REQUESTFLOW_RESULTS"] = connection_uri(results)
    if os.environ.get("REQUESTFLOW_DATA"):
        env["REQUESTFLOW_DATA"] = os.environ["REQUESTFLOW_DATA"]
    for key, value in env.items():  # Airflow's own variables: whatever the user exported wins
        if key.startswith("AIRFLOW__") and key not in ("AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER",
                                                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            env[key] = os.environ.get(key, value)
    return env


def write_config(env: dict[str, str]) -> Path:
    """``<AIRFLOW_HOME>/airflow.cfg`` with the environment's Airflow settings and this home's secrets (kept from
    the previous file): an Airflow started with this AIRFLOW_HOME alone still uses PostgreSQL and these DAGs, never
    the SQLite and examples of Airflow's default file. Airflow writes its own file only where there is none."""
    import configparser
    import secrets

    path = Path(env["AIRFLOW_HOME"]) / "airflow.cfg"
    old = configparser.ConfigParser(interpolation=None)
    try:
        old.read(path)
    except configparser.Error:
        pass

    def kept(section: str, option: str, make: Callable[[], str]) -> str:
        value = old.get(section, option, fallback="")
        return value if value and not value.startswith("{") else make()

    def fernet_key() -> str:
        from cryptography.fernet import Fernet
        return Fernet.generate_key().decode()

    sections: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if key.startswith("AIRFLOW__") and key.count("__") >= 2:
            _, section, option = key.split("__", 2)
            sections.setdefault(section.lower(), {})[option.lower()] = value
    sections.setdefault("core", {})["fernet_key"] = kept("core", "fernet_key", fernet_key)
    sections.setdefault("api_auth", {})["jwt_secret"] = kept("api_auth", "jwt_secret",
                                                             lambda: secrets.token_urlsafe(32))
    sections.setdefault("api", {})["secret_key"] = kept("api", "secret_key", lambda: secrets.token_urlsafe(16))
    lines = ["# Written by requestflow (operators/local/airflow_home.py) on every `requestflow sweep` / `airflow-env`:",
             "# the local Airflow's settings (also exported by `requestflow airflow-env`) and this home's secrets.",
             "# Airflow's defaults apply to everything else; AIRFLOW__SECTION__KEY variables override this file."]
    for section, options in sections.items():
        lines += ["", f"[{section}]"] + [f"{option} = {value.replace('%', '%%')}" for option, value in options.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".airflow.cfg.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:  # secrets
        handle.write("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def exports(env: dict[str, str]) -> str:
    """``export K=V`` lines for a POSIX shell."""
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def _revision(url: str) -> str | None:
    """Airflow's metadata schema revision, None when there is none yet."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(dsn, connect_timeout=15) as connection:
            if not connection.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]:
                return None
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None
    except psycopg.Error as exc:
        raise UserError(f"cannot reach Airflow's metadata database {shown(url)}: "
                        f"{str(exc).strip().splitlines()[0]}") from None


def migrate_if_needed(env: dict[str, str], log: Callable[[str], None]) -> bool:
    """``airflow db migrate`` unless the stamp says this Airflow version already migrated this database to the
    revision it holds now (a quick SQL read instead of a minute of Airflow). True when it migrated."""
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    stamp_file = Path(env["AIRFLOW_HOME"]) / STAMP
    want = {"airflow": importlib.metadata.version("apache-airflow-core"), "database": shown(url)}
    revision = _revision(url)
    try:
        stamp = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamp = None
    if revision is not None and stamp == {**want, "revision": revision}:
        return False
    log(f"airflow db migrate ({shown(url)}; the first time takes a minute or two)")
    started = time.monotonic()
    airflow_cli(env, "db", "migrate", timeout=900)
    revision = _revision(url)
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({**want, "revision": revision}) + "\n")
    log(f"migrated to revision {revision} in {time.monotonic() - started:.0f} s")
    return True


def ensure_pools(env: dict[str, str], boards: list[str], log: Callable[[str], None]) -> list[str]:
    """One pool of one slot per board (``board_<name>``), created when missing; the names created."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    wanted = {pool_name(board): board for board in boards}
    with psycopg.connect(dsn, connect_timeout=15) as connection:  # read only: writes go through Airflow's CLI
        existing = dict(connection.execute("SELECT pool, slots FROM slot_pool WHERE pool = ANY(%s)",
                                           (list(wanted),)).fetchall())
    for pool, slots in existing.items():
        if slots != 1:
            log(f"WARNING: pool {pool} has {slots} slots: points on board {wanted[pool]} may overlap "
                f"(airflow pools set {pool} 1 ...)")
    missing = {pool: {"slots": 1, "description": POOL_DESCRIPTION.format(board=board), "include_deferred": True}
               for pool, board in wanted.items() if pool not in existing}
    if missing:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(missing, handle)
        try:
            airflow_cli(env, "pools", "import", handle.name)
        finally:
            os.unlink(handle.name)
        log(f"created pool(s) {', '.join(missing)} (1 slot each)")
    return list(missing)


def airflow_cli(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run([airflow_binary(), *args], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(ROOT))
    if result.returncode != 0:
        tail = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()][-15:]
        raise RuntimeError(f"airflow {' '.join(args)} failed (exit {result.returncode}):\n" + "\n".join(tail))
    return result.stdout


def prepare(metadata: str | None = None, results: str | None = None, boards: list[str] | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, str]:
    """Make the local Airflow ready: metadata database created and migrated (only when needed), one pool per
    board of the inventory. Returns its environment (see ``environment``)."""
    log = log or (lambda line: print(f"requestflow: {line}", file=sys.stderr, flush=True))
    url, origin = metadata_url(metadata)
    if ensure_database(url):
        log(f"created Airflow's metadata database {shown(url)} ({origin})")
    env = environment(url, results)
    write_config(env)
    migrate_if_needed(env, log)
    ensure_pools(env, boards if boards is not None else inventory(), log)
    return env
