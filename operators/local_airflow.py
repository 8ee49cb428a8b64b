"""A local Airflow for requestflow: its environment, its metadata database, its pools, and one sweep run through it.

Controller world, and imports no Airflow at module level: Airflow reads its configuration when first imported, so
everything here builds an environment and runs Airflow in a subprocess with it (``airflow db migrate``,
``airflow pools import``, and ``python -m operators.local_airflow run-dag``, which runs a DAG once with
``dag.test()``: one process, the tasks one after the other, their logs on the terminal).

The local Airflow lives in requestflow's state folder (``<state>/airflow`` is its ``AIRFLOW_HOME``), reads the DAGs
of this checkout, keeps its metadata in the database ``airflow`` of the embedded PostgreSQL (the results stay in
their own database, ``postgres``, of the same server) or in the PostgreSQL given by ``--airflow-db URL`` /
``$REQUESTFLOW_AIRFLOW_DATABASE_URL``; never SQLite. ``requestflow airflow-env`` prints the same environment as
``export`` lines, for ``airflow standalone`` and friends.
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

from operators import stopping
from operators.config import ROOT
from requestflow.errors import UserError

METADATA_DATABASE = "airflow"
METADATA_ENV = "REQUESTFLOW_AIRFLOW_DATABASE_URL"
STAMP = ".requestflow-migrated"  # in AIRFLOW_HOME: what `airflow db migrate` last brought to head
POOL_DESCRIPTION = "requestflow: one point at a time on board {board}"
DEFAULT_DAG = "mobilenets_sweep"
# A sweep run from the terminal shows its tasks' own lines; Airflow's bookkeeping only when something is wrong
QUIET_LOGGERS = ("airflow.api_fastapi=warning airflow.dag_processing=warning airflow.serialization=warning "
                 "airflow.models=warning airflow.task.operators.airflow=warning task=warning "
                 "py.warnings=error")


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
    lines = ["# Written by requestflow (operators/local_airflow.py) on every `requestflow sweep` / `airflow-env`:",
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
    _airflow(env, "db", "migrate", timeout=900)
    revision = _revision(url)
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({**want, "revision": revision}) + "\n")
    log(f"migrated to revision {revision} in {time.monotonic() - started:.0f} s")
    return True


def ensure_pools(env: dict[str, str], boards: list[str], log: Callable[[str], None]) -> list[str]:
    """One pool of one slot per board (``board_<name>``), created when missing; the names created."""
    import psycopg
    from sqlalchemy.engine import make_url

    from operators.config import pool_name

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
            _airflow(env, "pools", "import", handle.name)
        finally:
            os.unlink(handle.name)
        log(f"created pool(s) {', '.join(missing)} (1 slot each)")
    return list(missing)


def _airflow(env: dict[str, str], *args: str, timeout: float = 300) -> str:
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
    from operators.config import inventory

    log = log or (lambda line: print(f"requestflow: {line}", file=sys.stderr, flush=True))
    url, origin = metadata_url(metadata)
    if ensure_database(url):
        log(f"created Airflow's metadata database {shown(url)} ({origin})")
    env = environment(url, results)
    write_config(env)
    migrate_if_needed(env, log)
    ensure_pools(env, boards if boards is not None else inventory(), log)
    return env


def scheduler_conflict(env: dict[str, str], dag_id: str) -> str | None:
    """Why ``dag.test()`` must not run now, if it must not: a live scheduler on the same metadata database also
    schedules the running runs of unpaused DAGs, test runs included, so the same points could run twice at once."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), connect_timeout=15) as connection:
        alive = connection.execute("SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
                                   "AND latest_heartbeat > now() - interval '60 seconds'").fetchone()[0]
        row = connection.execute("SELECT is_paused FROM dag WHERE dag_id = %s", (dag_id,)).fetchone()
    if alive and row is not None and not row[0]:
        return (f"an Airflow scheduler is running on this metadata database and {dag_id} is unpaused: trigger the "
                f"sweep from the UI (or `airflow dags trigger {dag_id} --conf ...`), or pause {dag_id}, or stop "
                "the scheduler first")
    return None


def run_dag(env: dict[str, str], conf: dict, dag_id: str = DEFAULT_DAG) -> dict:
    """Run ``dag_id`` once with ``conf`` through Airflow (``dag.test()`` in a subprocess with ``env``), its output
    on this terminal. The outcome: ``{"run_id", "state", "failed": [...]}``; UserError when Airflow refused the
    DAG or its conf (unknown DAG or param, a value the Params reject), or a scheduler would run it too."""
    conflict = scheduler_conflict(env, dag_id)
    if conflict:
        raise UserError(conflict)
    with tempfile.TemporaryDirectory(prefix="rf-run-") as tmp:
        outcome_file = Path(tmp) / "outcome.json"
        process = subprocess.Popen([sys.executable, "-m", "operators.local_airflow", "run-dag", dag_id,
                                    json.dumps(conf), str(outcome_file)], cwd=str(ROOT),
                                   env={"AIRFLOW__LOGGING__NAMESPACE_LEVELS": QUIET_LOGGERS,
                                        "AIRFLOW__LOGGING__CALLSITE_PARAMETERS": "", **os.environ, **env},
                                   stdin=subprocess.DEVNULL)
        stopped_by = stopping.wait(process, _stop_file(outcome_file))  # SIGINT/SIGTERM stop the run (#22)
        outcome = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
    if stopped_by is not None:
        stopping.end_as(stopped_by)
    if outcome is None:
        raise RuntimeError(f"the Airflow run of {dag_id} ended (exit {process.returncode}) without an outcome")
    if outcome.get("refused"):
        raise UserError(outcome["refused"])
    return outcome


def _stop_file(outcome_file: Path) -> Path:
    """Beside the run's outcome file: written when the command asks the run to stop (``operators.stopping``)."""
    return outcome_file.with_name("stop")


# -- inside the Airflow process -----------------------------------------------------------------------------------

def _run_dag_here(dag_id: str, conf: dict) -> dict:
    """Runs in the subprocess, with the environment set before Airflow is imported."""
    import copy
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the results store's schema check, at every task

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        path, error = next(iter(bag.import_errors.items()))
        return {"refused": f"the DAGs do not import: {path}: {str(error).strip().splitlines()[-1]}"}
    dag = bag.dags.get(dag_id)
    if dag is None:
        return {"refused": f"no DAG {dag_id!r} in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}; "
                           f"known: {', '.join(sorted(bag.dags))}"}
    unknown = sorted(set(conf) - set(dag.params.keys()))
    if unknown:
        return {"refused": f"DAG {dag_id} has no param {unknown[0]!r}; its params: {', '.join(dag.params.keys())}"}
    params = copy.deepcopy(dag.params)
    try:
        for key, value in conf.items():
            params[key] = value
        params.validate()
    except ParamValidationError as exc:
        return {"refused": f"DAG {dag_id} refused its conf: {str(exc).strip().splitlines()[0]}"}
    run = dag.test(run_conf=conf)
    return {"run_id": run.run_id, "state": str(run.state), "failed": _failed_tasks(dag_id, run.run_id)}


def _failed_tasks(dag_id: str, run_id: str) -> list[dict]:
    """Task instances of the run that did not succeed. The run's own state is not enough: Airflow decides it from
    the leaves alone (here the summary, which runs whatever happened, and the boards' clock teardowns)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                         TaskInstance.run_id == run_id)).all()
        return [{"task_id": ti.task_id, "map_index": ti.map_index, "label": ti.rendered_map_index,
                 "state": str(ti.state)}
                for ti in sorted(tis, key=lambda t: (t.task_id, t.map_index))
                if str(ti.state) not in ("success", "skipped")]


def _main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "run-dag":
        print("usage: python -m operators.local_airflow run-dag DAG_ID CONF_JSON OUTCOME_FILE", file=sys.stderr)
        return 2
    dag_id, conf, outcome_file = argv[1], json.loads(argv[2]), Path(argv[3])
    stopping.make_stoppable(_stop_file(outcome_file))
    outcome = _run_dag_here(dag_id, conf)
    outcome_file.write_text(json.dumps(outcome) + "\n")
    return 0 if outcome.get("state") == "success" and not outcome.get("failed") else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
