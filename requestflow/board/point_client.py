"""A point run in a child of the board's point server (issue #20): ``python -m requestflow.board.point_client run
ARGS...`` does what ``python -m requestflow.cli run ARGS...`` does (same arguments, output, result file, exit status)
without starting an interpreter that imports numpy, LiteRT or TensorFlow: the server
(``requestflow.board.point_server``) imported them once and forks a child per point, which runs the point with this
process's standard streams, working directory, environment, CPU affinity, niceness and umask.

This client imports the standard library's light modules only (a few tens of ms). It finds the server of its
installation (``server_key``: the Python, the preload profile of the point's backend and the environment that
matters at import), starting it when none answers or when it says that its modules changed on disk since it imported
them, sends its request with its standard streams (``SCM_RIGHTS``) and waits. The child's end is the client's: its
exit status, or the signal that ended it, raised again here (a child killed by SIGKILL or the OOM killer leaves a
client killed by SIGKILL: the job records 137, as for a killed runner). A SIGTERM, SIGINT, SIGHUP or SIGQUIT to the
client is passed to the child's process group (with SIGCONT, so that a stopped child gets it); a client that ends
first (killed) makes the server kill the child's group: a point never outlives its job. A server that ends mid-point
ends its child with it (``PR_SET_PDEATHSIG``); the client then exits ``SERVER_LOST``.

``python -m requestflow.board.point_client stop`` ends this user's point servers whose log is in this cache
(``$REQUESTFLOW_CACHE``); a server also ends by itself after ``$REQUESTFLOW_POINT_SERVER_IDLE_S`` seconds
(default ``DEFAULT_IDLE_S``) without a point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

PROFILES = ("tflite", "tf", "armcl")  # the preload profiles: the backends' (point_server.PRELOADS)
IDLE_ENV = "REQUESTFLOW_POINT_SERVER_IDLE_S"
DEFAULT_IDLE_S = 300.0
PER_POINT_ENV = ("REQUESTFLOW_PROGRESS",)  # differs between points: not part of the server's identity
# the environment read when the server imports (libraries, the dynamic loader, the allocator, Python, ours): part of
# the server's identity, so that a server never runs a point imported under another environment
IMPORT_ENV = ("TF_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO", "XNNPACK", "ONEDNN", "DNNL", "PYTHON", "LD_",
              "MALLOC_", "GLIBC_TUNABLES", "CUDA", "REQUESTFLOW_")
SERVER_MODULE = "requestflow.board.point_server"
SERVER_LOST = 70  # the client's exit status when the server ended before the point did (EX_SOFTWARE)
START_TIMEOUT_S = 30.0  # for the server to bind its socket (its imports come after: the request waits for them)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class ClientError(RuntimeError):
    """The point could not be handed to a server (the message says why)."""


def profile_of(argv: list[str]) -> str:
    """The preload profile of a ``run`` command line: its ``--backend`` (the runner's default: tflite)."""
    backend = "tflite"
    for index, arg in enumerate(argv):
        if arg == "--backend" and index + 1 < len(argv):
            backend = argv[index + 1]
        elif arg.startswith("--backend="):
            backend = arg.partition("=")[2]
    return backend if backend in PROFILES else "armcl"  # an unknown backend: numpy only (the runner refuses it)


def server_key(profile: str, env: dict[str, str] | None = None) -> str:
    """Which server runs a point: one per Python, user, preload profile and import-time environment (a server whose
    modules changed on disk since it imported them refuses points and ends: ``point_server.Server.stale``)."""
    env = os.environ if env is None else env
    identity = {"python": os.path.realpath(sys.executable), "prefix": sys.prefix, "uid": os.getuid(),
                "profile": profile,
                "env": sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_ENV) and k not in PER_POINT_ENV)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def address(key: str) -> str:
    """The server's socket: Linux's abstract namespace (no file to clean up; the server checks the peer's uid)."""
    return f"\0requestflow-point-server-{key}"


def log_folder() -> Path:
    from requestflow.board.files import cache_dir

    return cache_dir("point-server")


def idle_s() -> float:
    try:
        return float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_S)
    except ValueError:
        raise ClientError(f"${IDLE_ENV} must be a number of seconds, got {os.environ[IDLE_ENV]!r}") from None


def connect(profile: str) -> socket.socket:
    """A connection to the server of ``profile``, started when none answers."""
    key = server_key(profile)
    process, deadline = None, time.monotonic() + START_TIMEOUT_S
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(address(key))
            return client
        except (ConnectionRefusedError, FileNotFoundError):
            client.close()
        if process is None:
            process = start_server(key, profile)
        elif process.poll() not in (None, 0) or time.monotonic() > deadline:  # 0: another server had the key
            raise ClientError(f"the point server did not start ({_log_tail(key)})")
        time.sleep(0.01)


def start_server(key: str, profile: str):
    import subprocess

    log = log_folder() / f"{key}.log"
    env = {k: v for k, v in os.environ.items() if k not in PER_POINT_ENV}
    with open(log, "ab") as handle:  # the log's path in its command line: whoever looks for it finds it
        return subprocess.Popen([sys.executable, "-m", SERVER_MODULE, "--key", key, "--profile", profile,
                                 "--idle-s", f"{idle_s():g}", "--log", str(log)],
                                stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, cwd="/", env=env,
                                start_new_session=True)


def _log_tail(key: str) -> str:
    try:
        lines = (log_folder() / f"{key}.log").read_text(errors="replace").strip().splitlines()
    except OSError as exc:
        return f"no log: {exc.strerror}"
    return " | ".join(lines[-3:]) or "its log is empty"


def request(argv: list[str]) -> dict:
    return {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "affinity": sorted(os.sched_getaffinity(0)),
            "umask": _umask(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def standard_streams() -> list[int]:
    """This process's stdin, stdout and stderr (``/dev/null`` for one that is closed)."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def send(connection: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """One message: its length (a line), then its JSON (a line); ``fds`` go with the length line."""
    body = json.dumps(message).encode() + b"\n"
    header = b"%d\n" % len(body)
    if fds:
        socket.send_fds(connection, [header], fds)
    else:
        connection.sendall(header)
    connection.sendall(body)


STALE_RETRIES = 3


def run(argv: list[str]) -> int:
    """Run the point ``argv`` (``run ...``) in a child of the server; the child's exit status, or the signal that
    ended it raised in this process."""
    for _ in range(STALE_RETRIES):
        connection = connect(profile_of(argv))
        send(connection, request(argv), standard_streams())
        reader = connection.makefile("rb")
        first = _reply(reader)
        if not (first or {}).get("stale"):
            break
        connection.close()  # the server's modules changed on disk: it ends, a new one imports them
    else:
        raise ClientError(f"the point server's modules kept changing ({STALE_RETRIES} servers in a row)")

    def forward(signum, _frame) -> None:
        try:
            send(connection, {"signal": signum})
        except OSError:
            pass

    for signum in FORWARDED:  # after the request: the server reads a signal only once it has one
        signal.signal(signum, forward)
    reply = first if first is None or "pid" not in first else _reply(reader)
    if reply is not None and "error" in reply:
        print(f"requestflow: error: {reply['error']}", file=sys.stderr)
        return 2
    status = None if reply is None else reply.get("status")
    if status is None:
        tail = _log_tail(server_key(profile_of(argv)))
        print(f"requestflow: error: the point server ended before the point did ({tail})", file=sys.stderr)
        return SERVER_LOST
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum in FORWARDED:  # (SIGKILL's cannot be changed, nor needs to be)
            signal.signal(signum, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def _reply(reader) -> dict | None:
    """The server's next message (None: it closed the connection)."""
    for line in reader:
        reply = json.loads(line)
        if isinstance(reply, dict):  # (the length lines of the framing are numbers)
            return reply
    return None


def server_processes(folder: Path | None = None) -> list[int]:
    """This user's point servers whose log is in ``folder`` (default: this cache's), by pid."""
    folder = str(folder or log_folder())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                args = handle.read().decode(errors="replace").split("\0")
            if os.stat(f"/proc/{name}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        if SERVER_MODULE in args and "--log" in args and args[args.index("--log") + 1].startswith(folder + "/"):
            found.append(int(name))
    return sorted(found)


def stop(folder: Path | None = None, timeout_s: float = 10.0) -> list[int]:
    """End the servers of ``server_processes`` (SIGTERM: each kills the children it still has); their pids."""
    pids = server_processes(folder)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.02)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["run"]:
            return run(argv)
        if argv == ["stop"]:
            pids = stop()
            print(f"stopped {len(pids)} point server(s){': ' if pids else ''}{' '.join(map(str, pids))}")
            return 0
    except ClientError as exc:
        print(f"requestflow: error: {exc}", file=sys.stderr)
        return SERVER_LOST
    print("usage: python -m requestflow.board.point_client run ARGS... | stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
