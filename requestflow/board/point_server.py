"""The board's point server (issue #20): imports numpy, Pillow, LiteRT or TensorFlow and the runner's modules once
(``point_preload``), then forks a fresh child per point (``requestflow.board.point_client`` sends them), so that a
point skips the interpreter's start and the heavy imports, which took most of a sweep's wall time
(bench/RESULTS.md).

What a child shares with the server is what a fresh process would have read from disk: imported modules, nothing
else. The server never creates a backend, an interpreter, a TensorFlow context or a thread: TensorFlow is not
fork-safe once its thread pools exist, XNNPACK's pool belongs to the interpreter that creates it. ``preload``
checks it: after the imports the server must be single-threaded (numpy's OpenBLAS pool is shut down by its own
fork handler, and started again in a child that needs it) and TensorFlow's eager context must not exist; a server
that fails the check refuses to start. ``gc.freeze()`` after the imports keeps the children's collector off the
inherited objects (no copy-on-write of them, no longer collections).

Each child, before it runs the point: its own process group (the server kills it whole), death with the server
(``PR_SET_PDEATHSIG``), the client's standard streams, working directory, environment, CPU affinity, niceness and
umask, the signal dispositions of a fresh interpreter; then the point, as ``python -m requestflow.cli run`` runs
it, with ``isolation`` ``fork`` in its document (``point_child``).
Its end (status) goes back to the client; a client that goes away makes the server kill the child's group; a child
that ends leaves nothing of its group behind (SIGKILL to the group once it is reaped).

One thread, one ``selectors`` loop: the listening socket, a wake-up pipe for SIGCHLD, and each client's connection
(its signals to forward, or its end). Ends after ``--idle-s`` without a child, or on SIGTERM / SIGINT / SIGHUP
(its children killed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import selectors
import signal
import socket
import sys
import time

from requestflow.board.point_child import run_child
from requestflow.board.point_client import PROFILES, address, peer_uid, send
from requestflow.board.point_preload import fork_safety, module_files, preload, stamp, trial_fork

REQUEST_TIMEOUT_S = 10.0


class Stop(Exception):
    """A signal asked the server to end."""


class Server:
    def __init__(self, key: str, profile: str, idle_s: float) -> None:
        self.key, self.profile, self.idle_s = key, profile, idle_s
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket | None] = {}  # pid -> its client's connection (None: gone)
        self.clients: dict[socket.socket, int] = {}
        self.pending: dict[socket.socket, bytes] = {}  # the unfinished last line a client sent
        self.forks = 0
        self.info: dict = {}

    def bind(self) -> bool:
        """The server's socket, bound before the imports (a client's request waits in its backlog); False when
        another server has it."""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(address(self.key))
        except OSError:
            return False
        self.listener.listen(64)
        return True

    def serve(self) -> None:
        self.info = {"mode": "fork", "server_pid": os.getpid(),
                     "server_started_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                     **preload(self.profile)}
        self.files = module_files()
        trial_fork()
        unsafe = fork_safety()
        if unsafe is not None:
            raise SystemExit(f"point server: not fork-safe after its imports ({unsafe}): refusing points")
        print(f"point server {self.key} ({self.profile}): ready, pid {os.getpid()}, imports "
              f"{self.info['preload_s']:.2f} s ({', '.join(self.info['preloaded'])})", flush=True)
        self.wakeup_read, self.wakeup_write = socket.socketpair()
        for end in (self.wakeup_read, self.wakeup_write):
            end.setblocking(False)
        signal.set_wakeup_fd(self.wakeup_write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _stop)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ)
        idle_since = time.monotonic()
        try:
            while True:
                timeout = None if self.children else max(0.0, idle_since + self.idle_s - time.monotonic())
                events = self.selector.select(timeout)
                for event, _ in events:
                    if event.fileobj is self.listener:
                        self.accept()
                    elif event.fileobj is self.wakeup_read:
                        self.reap()
                    else:
                        self.from_client(event.fileobj)
                self.reap()
                if self.listener.fileno() < 0 and not self.children:
                    return  # stale: its last point has ended
                if self.children:
                    idle_since = time.monotonic()
                elif not events and time.monotonic() - idle_since >= self.idle_s:
                    print(f"point server {self.key}: idle for {self.idle_s:g} s, {self.forks} point(s) run: ending",
                          flush=True)
                    return
        except Stop:
            print(f"point server {self.key}: stopped by a signal, {len(self.children)} child(ren) killed",
                  flush=True)
        finally:
            for pid in list(self.children):
                _kill_group(pid)
            while self.children:
                self.reap(block=True)

    def accept(self) -> None:
        connection, _ = self.listener.accept()
        try:
            if peer_uid(connection) != os.getuid():
                raise ValueError("a client of another user")
            connection.settimeout(REQUEST_TIMEOUT_S)
            request, fds = _receive(connection)
            connection.settimeout(None)
        except (OSError, ValueError) as exc:
            print(f"point server {self.key}: request refused: {exc}", flush=True)
            connection.close()
            return
        if self.stale():  # the client starts a new server, once this one has let go of the address
            self.selector.unregister(self.listener)
            self.listener.close()
            send(connection, {"stale": True})
            _close(connection, fds)
            return
        if request.get("argv", [])[:1] != ["run"]:
            send(connection, {"error": "the point server runs `run` commands only"})
            _close(connection, fds)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.forks += 1
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: the point fails, the server goes on
            send(connection, {"error": f"the point server could not fork: {exc}"})
            _close(connection, fds)
            return
        if pid == 0:
            run_child(request, fds, {**self.info, "forks": self.forks},
                   [self.listener, self.wakeup_read, self.wakeup_write, connection, *self.clients])
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first, the group exists before a kill
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        self.children[pid] = connection
        self.clients[connection] = pid
        self.selector.register(connection, selectors.EVENT_READ)
        try:
            send(connection, {"pid": pid})
        except OSError:  # the client is gone already: its end is read next
            pass

    def stale(self) -> bool:
        """Whether a module this server imported changed on disk since (its points would run the old code)."""
        if self.listener.fileno() < 0:
            return True
        changed = [path for path, recorded in self.files.items()
                   if stamp(path) != recorded]
        if changed:
            print(f"point server {self.key}: {changed[0]} changed since it was imported: ending", flush=True)
        return bool(changed)

    def from_client(self, connection: socket.socket) -> None:
        """A client's message (a signal to pass on to its child's group) or its end (the child killed)."""
        pid = self.clients.get(connection)
        try:
            data = connection.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._forget(connection)
            if pid is not None:
                _kill_group(pid)
            return
        lines = (self.pending.pop(connection, b"") + data).split(b"\n")
        self.pending[connection] = lines.pop()  # a message cut by the read: its end comes with the next
        for line in lines:
            try:
                signum = int(json.loads(line).get("signal"))
            except (ValueError, TypeError, AttributeError):
                continue  # the length lines of the framing, or garbage
            if pid is not None and signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
                for sent in (signum, signal.SIGCONT):  # SIGCONT: a stopped child handles its signal
                    try:
                        os.killpg(pid, sent)
                    except ProcessLookupError:
                        pass

    def reap(self, block: bool = False) -> None:
        try:
            while self.wakeup_read.recv(4096):
                pass
        except (BlockingIOError, AttributeError):
            pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            connection = self.children.pop(pid, None)
            _kill_group(pid)  # whatever the point started and left
            if connection is not None:
                try:
                    send(connection, {"status": status})
                except OSError:
                    pass
                self._forget(connection)
            if block:
                return

    def _forget(self, connection: socket.socket) -> None:
        self.pending.pop(connection, None)
        pid = self.clients.pop(connection, None)
        if pid in self.children:
            self.children[pid] = None
        try:
            self.selector.unregister(connection)
        except (KeyError, ValueError):
            pass
        connection.close()


def _stop(*_) -> None:
    raise Stop


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """A client's request (``point_client.send``) and the file descriptors that came with it."""
    data, fds, _, _ = socket.recv_fds(connection, 4096, 3)
    while b"\n" not in data:
        more = connection.recv(4096)
        if not more:
            raise ValueError("the client went away")
        data += more
    header, _, body = data.partition(b"\n")
    size = int(header)
    while len(body) < size:
        more = connection.recv(size - len(body))
        if not more:
            raise ValueError("the client went away")
        body += more
    if len(fds) != 3:
        raise ValueError(f"expected 3 standard streams, got {len(fds)}")
    return json.loads(body), fds


def _close(connection: socket.socket, fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m requestflow.board.point_server",
                                     description="the board's point server (started by point_client)")
    parser.add_argument("--key", required=True)
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument("--idle-s", type=float, required=True)
    parser.add_argument("--log", help="where its output goes (for the record: the client opened it)")
    args = parser.parse_args(argv)
    server = Server(args.key, args.profile, args.idle_s)
    if not server.bind():
        return 0  # another server of this key was started meanwhile: it serves
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
