"""The scaled-out stack for a user (issue #18): ``./dev.sh stack up`` starts it locally and prints the lines that
point a shell at it; ``./dev.sh stack down`` stops every process it started and removes its namespaces.

    python -m tests.stack_cli up       start (or find running) the stack; print its export lines
    python -m tests.stack_cli down     stop it

The stack is ``tests.celery_stack.CeleryStack`` on a farm of 4 sshd boards (``tests.farm``): sites ``a``
(rfb1, rfb2) and ``b`` (rfb3, rfb4), each with its Celery worker on a host of its own, plus the scheduler,
api-server, dag-processor and triggerer, Redis, and throwaway metadata and results databases in the controller's
PostgreSQL (gone with ``down``). A detached keeper process (``serve``) holds it until ``down`` sends it SIGTERM; it
writes ``ready.json`` or ``failed.txt`` into the stack's folder, ``$REQUESTFLOW_STATE/stack`` (default
``~/.local/state/requestflow/stack``). The boards' work dirs, under ``<folder>/work``, are kept across ``up``s.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.keeper import running, stop

SITES = {"a": [1, 2], "b": [3, 4]}
EXPORTED = ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CORE__DAGS_FOLDER",
            "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API__BASE_URL",
            "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "AIRFLOW__OPERATORS__DEFAULT_QUEUE", "REQUESTFLOW_BOARDS")


def stack_dir() -> Path:
    state = os.environ.get("REQUESTFLOW_STATE") or os.path.expanduser("~/.local/state/requestflow")
    return Path(state) / "stack"


def export_lines(ready: dict) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in ready["env"].items()]


def _describe(ready: dict) -> str:
    sites = "; ".join(f"site {site}: {', '.join(boards)} (worker {ready['workers'][site]})"
                      for site, boards in ready["sites"].items())
    return (f"# the stack is up: UI {ready['ui']} (every user is an admin); {sites}\n"
            f"# logs in {ready['home']}; ./dev.sh stack down stops it")


def up(timeout_s: float = 900) -> int:
    from tests.celery_stack import available

    folder = stack_dir()
    up_already = running(folder)
    if up_already is not None:
        print(_describe(up_already[1]), file=sys.stderr)
        print("\n".join(export_lines(up_already[1])))
        return 0
    ok, reason = available()
    if not ok:
        print(f"error: the stack cannot run here: {reason}", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("ready.json", "failed.txt", "serve.pid"):
        (folder / stale).unlink(missing_ok=True)
    with (folder / "serve.log").open("ab") as log:
        keeper = subprocess.Popen([sys.executable, "-m", "tests.stack_cli", "serve"], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  cwd=Path(__file__).resolve().parents[1])
    (folder / "serve.pid").write_text(f"{keeper.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (folder / "ready.json").is_file():
            ready = json.loads((folder / "ready.json").read_text())
            print(_describe(ready), file=sys.stderr)
            print("\n".join(export_lines(ready)))
            return 0
        if keeper.poll() is not None:
            why = (folder / "failed.txt").read_text().strip() if (folder / "failed.txt").is_file() else \
                f"exit {keeper.returncode}, see {folder / 'serve.log'}"
            print(f"error: the stack did not start: {why}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    os.kill(keeper.pid, signal.SIGTERM)
    print(f"error: the stack did not start in {timeout_s:.0f} s (another farm running?)", file=sys.stderr)
    return 1


def serve() -> int:
    """The keeper: the farm and the stack until SIGTERM (or SIGINT), then every part of them removed."""
    from tests.airflow_run import farm_connections
    from tests.airflow_services import SERVICES
    from tests.celery_stack import CeleryStack
    from tests.fake_sysfs import hikey960_tree
    from tests.farm import Farm

    folder = stack_dir()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    farm = Farm(sum(len(b) for b in SITES.values()), folder / "farm")
    stack = None
    try:
        farm.start()
        site_of = {f"rfb{n}": site for site, boards in SITES.items() for n in boards}
        sysfs = {}
        for board in farm.boards:  # fake clocks: a simulated board never touches this machine's
            tree = folder / "sysfs" / board.name
            if not tree.is_dir():
                hikey960_tree(tree)
            sysfs[board.name] = str(tree)
        env = {"REQUESTFLOW_BOARDS": ",".join(site_of),
               **farm_connections(farm, folder / "work", sysfs_root=sysfs, site=site_of)}
        home = folder / "airflow"
        stack = CeleryStack(home, farm, SITES, env, pools=tuple(f"board_{b}" for b in site_of),
                            services=(*SERVICES, "triggerer"))
        stack.__enter__()
        exported = {key: stack.services.env[key] for key in EXPORTED}
        exported |= {key: value for key, value in stack.services.env.items() if key.startswith("AIRFLOW_CONN_")}
        ready = {"pid": os.getpid(), "home": str(home), "ui": f"http://127.0.0.1:{stack.services.port}",
                 "sites": {site: [f"rfb{n}" for n in boards] for site, boards in SITES.items()},
                 "workers": {name: f"{site.hostname} ({site.worker_ip}, namespace {site.netns})"
                             for name, site in stack.sites.items()},
                 "env": exported}
        (folder / ".ready.json").write_text(json.dumps(ready, indent=1) + "\n")
        os.replace(folder / ".ready.json", folder / "ready.json")
        while not stop.wait(1.0):
            pass
    except Exception as exc:  # noqa: BLE001 - said to the waiting `up`
        (folder / "failed.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        return 1
    finally:
        (folder / "ready.json").unlink(missing_ok=True)
        try:
            if stack is not None:
                stack.close()
        finally:
            farm.close()
            (folder / "serve.pid").unlink(missing_ok=True)
    return 0


def down(timeout_s: float = 120) -> int:
    return stop(stack_dir(), "stack", timeout_s)


def main(argv: list[str]) -> int:
    if argv == ["up"]:
        return up()
    if argv == ["down"]:
        return down()
    if argv == ["serve"]:
        return serve()
    print("usage: ./dev.sh stack up | ./dev.sh stack down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
