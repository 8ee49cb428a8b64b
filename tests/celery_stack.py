"""requestflow scaled out, on this machine's own parts (issue #18): Airflow with the CeleryExecutor, a Redis broker,
the metadata and results in the controller's PostgreSQL, the scheduler, api-server and dag-processor as separate
processes (``tests.airflow_services``), and one Celery worker per site, each on a "host" of its own.

A site's worker host is the network namespace ``rfw<k>`` (site k, 1-based) with a hostname of its own (a UTS
namespace: the task instances show where they ran), joined to the controller by a veth pair in the /30
``10.232.<k>.0/30`` (``rfw<k>h`` on the controller at 10.232.<k>.1, ``eth0`` at 10.232.<k>.2), and to each board of
its site (a ``tests.farm`` board ``rfb<n>``) by a veth pair of their own in ``10.233.<n>.0/30`` (``b<n>`` at
10.233.<n>.1 on the worker, ``w<k>`` at 10.233.<n>.2 on the board), with a host route to the board's sshd address
10.231.<n>.2 over it. No namespace has a default route and the controller forwards nothing: a worker reaches the
controller's side of its link and its own site's boards, nothing else. The controller's services listen on
127.0.0.1; a relay (``socat``) on the controller's end of each worker's link forwards the worker's connections to
PostgreSQL, Redis and the api-server, as a firewall's port forward would (PostgreSQL sees them from 127.0.0.1).

    with Farm(4, tmp) as farm, CeleryStack(tmp / "airflow", farm, {"a": [1, 2], "b": [3, 4]}, env) as stack:
        stack.services.cli("dags", "trigger", ...)

Each worker serves its site's queue and the default queue (the tasks that touch no board: plan, summary, verdict).
Everything is started in process groups of its own and stopped on leaving; namespaces ``rfw<k>`` and links
``rfw<k>h`` that a crashed run left behind are removed on entering (only ever while a farm, hence its lock, runs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.airflow_services import AIRFLOW, SERVER, SERVICES, AirflowServices, _signal_group, free_port
from tests.farm import Farm, FarmError, _delete_link, _disable_ipv6, _kill_netns_processes, _run

SITES = ("a", "b")  # the sites of `./dev.sh stack up` and of docker-compose.yml's workers
PREFIX = "rfw"
SUBNET = "10.232"  # site k's worker: 10.232.k.0/30
BOARD_LINKS = "10.233"  # board n's link to its site's worker: 10.233.n.0/30
_NETNS = re.compile(rf"^{PREFIX}\d+$")
_HOST_LINK = re.compile(rf"^{PREFIX}\d+h$")
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
SOCAT = shutil.which("socat") or "/usr/bin/socat"


def available() -> tuple[bool, str]:
    """Whether a Celery stack can run here (on top of the farm's own needs), and if not, why not."""
    ok, reason = Farm.available()
    if not ok:
        return ok, reason
    for tool in (REDIS, SOCAT):
        if not os.access(tool, os.X_OK):
            return False, f"{Path(tool).name} not found (apt-get install redis-server socat)"
    try:
        import airflow.providers.celery  # noqa: F401
    except ImportError:
        return False, "apache-airflow-providers-celery is not installed (the controller extra has it)"
    return True, "ok"


class Site:
    """One site: its worker host (a network namespace) and the farm boards it reaches."""

    def __init__(self, index: int, name: str, boards: list, home: Path) -> None:
        self.index = index
        self.name = name  # the Celery queue
        self.boards = boards  # tests.farm.Board
        self.netns = f"{PREFIX}{index}"
        self.host_link = f"{self.netns}h"
        self.controller_ip = f"{SUBNET}.{index}.1"  # the controller, as the worker sees it
        self.worker_ip = f"{SUBNET}.{index}.2"
        self.hostname = f"worker-{name}"
        self.log = home / f"worker-{name}.log"
        self.worker: subprocess.Popen | None = None
        self.log_offset = 0  # where the running worker's part of the log starts

    def create(self) -> None:
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        _disable_ipv6(None, self.host_link)
        _disable_ipv6(self.netns, "all")
        _run(["ip", "addr", "add", f"{self.controller_ip}/30", "dev", self.host_link])
        _run(["ip", "link", "set", self.host_link, "up"])
        _run(["ip", "-n", self.netns, "addr", "add", f"{self.worker_ip}/30", "dev", "eth0"])
        for device in ("lo", "eth0"):
            _run(["ip", "-n", self.netns, "link", "set", device, "up"])
        for board in self.boards:  # a cable from the worker to each board of its site
            n, mine, theirs = board.index, f"b{board.index}", f"w{self.index}"
            _run(["ip", "link", "add", mine, "netns", self.netns, "type", "veth", "peer", "name", theirs,
                  "netns", board.netns])
            _disable_ipv6(self.netns, mine)
            _disable_ipv6(board.netns, theirs)
            _run(["ip", "-n", self.netns, "addr", "add", f"{BOARD_LINKS}.{n}.1/30", "dev", mine])
            _run(["ip", "-n", board.netns, "addr", "add", f"{BOARD_LINKS}.{n}.2/30", "dev", theirs])
            _run(["ip", "-n", self.netns, "link", "set", mine, "up"])
            _run(["ip", "-n", board.netns, "link", "set", theirs, "up"])
            _run(["ip", "-n", self.netns, "route", "add", f"{board.host}/32", "via", f"{BOARD_LINKS}.{n}.2"])

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command on the worker's host (its network namespace); output captured."""
        return _run(["ip", "netns", "exec", self.netns, *argv], check=False, timeout=timeout)

    def destroy(self) -> None:
        _kill_netns_processes(self.netns)
        _delete_link(self.host_link)
        if self.netns in _namespaces():
            _run(["ip", "netns", "del", self.netns])


class CeleryStack:
    """The scaled-out stack (see the module's doc): ``sites`` maps a site's name to the (1-based) farm boards it
    holds; ``extra_env`` goes to every Airflow process (board Connections, inventory, ...); ``pools`` are created
    before the services start; ``start_workers`` says which sites get a worker at once (default: all);
    ``concurrency`` is each worker's; ``services`` the Airflow services besides the workers."""

    def __init__(self, home: Path, farm: Farm, sites: dict[str, list[int]], extra_env: dict[str, str] | None = None,
                 pools: tuple[str, ...] = (), start_workers: tuple[str, ...] | None = None,
                 concurrency: int = 1, services: tuple[str, ...] = SERVICES) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.sites = {name: Site(k, name, [farm.boards[i - 1] for i in boards], home)
                      for k, (name, boards) in enumerate(sites.items(), start=1)}
        self.start_workers = tuple(self.sites) if start_workers is None else start_workers
        self.concurrency = concurrency
        self.redis_port = free_port()
        self.redis: subprocess.Popen | None = None
        self.relays: list[subprocess.Popen] = []
        server = urlsplit(SERVER)
        self.postgres = (server.hostname or "127.0.0.1", server.port or 5432)
        self.services = AirflowServices(home, {**celery_settings(f"redis://127.0.0.1:{self.redis_port}/0"),
                                               **(extra_env or {})}, pools=pools, services=services)
        # the result backend is the metadata database (as in docker-compose.yml), named by AirflowServices
        self.services.env["AIRFLOW__CELERY__RESULT_BACKEND"] = result_backend(
            self.services.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])

    # -- set-up and teardown --------------------------------------------------------------------------------------
    def __enter__(self) -> CeleryStack:
        try:
            cleanup_leftovers()
            for site in self.sites.values():
                site.create()
            self.start_redis()
            for site in self.sites.values():
                for port in (self.postgres[1], self.redis_port, self.services.port):
                    target = self.postgres[0] if port == self.postgres[1] else "127.0.0.1"
                    self.relays.append(_start([SOCAT, f"TCP-LISTEN:{port},bind={site.controller_ip},reuseaddr,fork",
                                               f"TCP:{target}:{port}"], self.home / "relays.log"))
            self.services.__enter__()
            for name in self.start_workers:
                self.start_worker(name)
            for name in self.start_workers:
                self.wait_for_worker(name, timeout=240)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        errors = []
        for site in self.sites.values():
            self.stop_worker(site.name)
        self.services.close()
        for process in [*self.relays, *([self.redis] if self.redis else [])]:
            _stop(process)
        self.relays.clear()
        self.redis = None
        for site in self.sites.values():
            try:
                site.destroy()
            except (FarmError, OSError, subprocess.SubprocessError) as error:
                errors.append(f"{site.netns}: {error}")
        if errors:
            raise FarmError("celery stack teardown incomplete: " + "; ".join(errors))

    # -- the parts ------------------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        """The broker: a Redis of the stack's own on 127.0.0.1, nothing saved to disk."""
        self.redis = _start([REDIS, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(self.home)], self.home / "redis.log")
        deadline = time.monotonic() + 30
        while _run(["redis-cli", "-p", str(self.redis_port), "ping"], check=False).stdout.strip() != "PONG":
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{_tail(self.home / 'redis.log')}")
            time.sleep(0.2)

    def stop_redis(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.redis is not None:
            _stop(self.redis, sig)
            self.redis = None

    def worker_env(self, name: str) -> dict[str, str]:
        """A site's worker sees the controller at its end of the worker's link."""
        site = self.sites[name]
        env = dict(self.services.env)
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                    "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                    "AIRFLOW__API__BASE_URL", "AIRFLOW_CONN_REQUESTFLOW_RESULTS"):
            env[key] = env[key].replace(f"@{self.postgres[0]}:", f"@{site.controller_ip}:") \
                .replace("127.0.0.1", site.controller_ip)
        return env

    def start_worker(self, name: str) -> None:
        """``airflow celery worker --queues <site>,default`` on the site's host, under the host's name."""
        site = self.sites[name]
        if site.worker is not None and site.worker.poll() is None:
            return
        script = 'hostname "$1" && shift && exec "$@"'
        site.log_offset = site.log.stat().st_size if site.log.exists() else 0
        site.worker = _start(
            ["ip", "netns", "exec", site.netns, "unshare", "--uts", "sh", "-c", script, "sh", site.hostname,
             AIRFLOW, *worker_command(name, site.hostname), "--concurrency", str(self.concurrency),
             # its logs are on the controller's disk (one filesystem here): no log server, no chatter between workers
             "--skip-serve-logs", "--without-mingle", "--without-gossip"],
            site.log, env=self.worker_env(name), append=True)

    def wait_for_worker(self, name: str, timeout: float) -> None:
        """Until the site's worker says it is ready (Celery's "<name> ready." on its log)."""
        site = self.sites[name]
        deadline = time.monotonic() + timeout
        marker = f"{site.hostname}@{site.hostname} ready."
        while True:
            text = site.log.read_text(errors="replace") if site.log.exists() else ""
            if marker in text[site.log_offset:]:
                return
            if site.worker is None or site.worker.poll() is not None:
                raise RuntimeError(f"the worker of site {name} exited:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker of site {name} not ready in {timeout:.0f} s:\n{text[-4000:]}")
            time.sleep(1)

    def stop_worker(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the site's worker: ``sig`` to its process group (SIGKILL: a host that died), then whatever is left
        on the worker's host. Its tasks' board jobs run on the boards and are not touched."""
        site = self.sites[name]
        if site.worker is not None:
            _stop(site.worker, sig)
            site.worker = None
        if site.netns in _namespaces():
            _kill_netns_processes(site.netns)

    def kill_worker_group(self, name: str) -> None:
        """SIGKILL the worker's process group and nothing else: the fault of a worker host that dies at once."""
        site = self.sites[name]
        if site.worker is not None:
            _signal_group(site.worker.pid, signal.SIGKILL)


def celery_settings(broker_url: str) -> dict[str, str]:
    """The Airflow settings of the Celery stack, besides AirflowServices' own (docker-compose.yml sets the same:
    tests/controller/test_compose.py compares them). The result backend, the metadata database, is the stack's."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
        # the task instances' hostname is the worker host's own name, without a DNS lookup (a worker host here
        # resolves nothing; in compose, the container's hostname)
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname",
        "AIRFLOW__CORE__PARALLELISM": "4",
    }


def result_backend(sql_alchemy_conn: str) -> str:
    """Celery's result backend: the metadata database, through SQLAlchemy (``db+postgresql://...``)."""
    return "db+" + sql_alchemy_conn.replace("postgresql+psycopg2://", "postgresql://")


def worker_command(site: str, hostname: str) -> list[str]:
    """A site's worker (after ``airflow``): its site's queue and the default queue (the tasks that touch no board),
    under the site's worker hostname. docker-compose.yml's workers run the same."""
    queues = ",".join(dict.fromkeys([site, "default"]))
    return ["celery", "worker", "--queues", queues, "--celery-hostname", f"{hostname}@{hostname}"]


def cleanup_leftovers() -> list[str]:
    """Remove the worker hosts a crashed run left behind (their processes, links and namespaces)."""
    removed = []
    namespaces = _namespaces()
    for netns in namespaces:
        _kill_netns_processes(netns)
    links = re.findall(r"^\d+: ([^:@\s]+)", _run(["ip", "-o", "link", "show"]).stdout, flags=re.MULTILINE)
    removed += [f"link {link}" for link in links if _HOST_LINK.match(link) and _delete_link(link)]
    for netns in namespaces:
        _run(["ip", "netns", "del", netns])
        removed.append(f"netns {netns}")
    return removed


def _namespaces() -> list[str]:
    names = (line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip())
    return [name for name in names if _NETNS.match(name)]


def _start(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
           append: bool = False) -> subprocess.Popen:
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _stop(process: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> None:
    _signal_group(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)  # and whatever the group leader left behind
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
