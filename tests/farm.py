"""A simulated board farm for tests: each board is a real OpenSSH sshd in a network namespace of its own.

Board n (1-based) is the network namespace ``rfb<n>``, joined to the host by a veth pair (``rfb<n>h`` on the host,
``eth0`` on the board) in the private /30 ``10.231.<n>.0/30``: 10.231.<n>.1 on the host side, 10.231.<n>.2 on the
board. A namespace holds only that /30 (no default route, IPv6 off), so a board reaches the host side of its own link
and nothing else, whether the host forwards packets or not. Each board's sshd listens on port 22 of its address, with
its own config, host key, pid file and log under the farm's folder, and lets root in with the farm's throwaway
ed25519 key only. It runs in a UTS namespace of its own too, so ``hostname`` on a board says the board's name.
Namespaces share the host's filesystem: a board's work dir is just a folder under the farm's root dir.

One farm at a time on a machine (a lock under /run says so): starting one first removes whatever a crashed run left
behind (namespaces ``rfb<n>``, host links ``rfb<n>h``, the processes in those namespaces).

    with Farm(2, tmp_path) as farm:
        with farm.boards[0].connection() as c:
            c.run("hostname")

Needs root, iproute2 and Debian's openssh-server (``bash tests/farm-setup.sh`` installs them); ``Farm.available()``
says why not. ``python tests/farm.py --cleanup`` removes leftovers by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import fabric

PREFIX = "rfb"
SUBNET = "10.231"  # board n: 10.231.n.0/30
MAX_BOARDS = 254
SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege-separation directory
LOCK_FILE = Path("/run/lock/requestflow-farm.lock")
SETUP_HINT = "run: bash tests/farm-setup.sh"

_NETNS = re.compile(rf"^{PREFIX}\d+$")
_HOST_LINK = re.compile(rf"^{PREFIX}\d+h$")
# The command line of a farm sshd, to find one whose namespace is already gone.
_SSHD_CMDLINE = rf"sshd -D -e -f \S*/{PREFIX}[0-9]+/sshd_config"


# An arm64 board (issue #15): sshd's ForceCommand. Every command of a session (and what it leaves running) runs in a
# user and mount namespace of its own, where a private binfmt_misc instance (Linux >= 6.7: per user namespace; the
# host's stays untouched, nothing is registered machine-wide) hands aarch64 ELF files to qemu-aarch64-static
# (opened at registration: F), chrooted into the arm64 userland with /proc, /dev, /sys and the shared folders
# bound at their own paths. So `uname -m` says aarch64, `python3.11` is aarch64 code, and /proc/cpuinfo is still the
# x86 host's: what a runner under qemu-user sees. The root is an overlay on a tmpfs of the session's own, so the
# mount points and whatever the board writes outside the shared folders never reach the (cached) userland. SFTP is
# sshd's own sftp-server, outside the chroot: the paths a board uses (its work dir, the shared folders) are the
# same inside and out.
ARM64_ENTER = r"""#!/bin/sh
if [ "$SSH_ORIGINAL_COMMAND" = internal-sftp ]; then exec /usr/lib/openssh/sftp-server; fi
exec unshare --map-root-user --mount --propagation private --fork sh -c '
set -e
rootfs=$1; shift
magic="\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
mask="\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf "%s" ":qemu-aarch64:M::$magic:$mask:/usr/bin/qemu-aarch64-static:FP" > /proc/sys/fs/binfmt_misc/register
session={session}
mount -t tmpfs tmpfs "$session"
mkdir "$session/upper" "$session/work" "$session/root"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$session/upper,workdir=$session/work" "$session/root"
root=$session/root
for d in proc dev sys; do mount --rbind "/$d" "$root/$d"; done
for shared in "$@"; do mkdir -p "$root$shared"; mount --rbind "$shared" "$root$shared"; done
cd /
exec chroot "$root" /bin/sh -c "${{SSH_ORIGINAL_COMMAND:-exec /bin/sh}}"
' sh '{rootfs}' {shared}
"""


class FarmError(RuntimeError):
    """The farm could not be set up (or torn down)."""


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise FarmError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _netns_pids(netns: str) -> list[int]:
    """The live processes in a network namespace (zombies have no namespace any more and are not listed)."""
    result = _run(["ip", "netns", "pids", netns], check=False)
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_netns_processes(netns: str, timeout: float = 5.0) -> None:
    """SIGTERM every process in the namespace, SIGKILL what is left after `timeout`, wait until none is left."""
    pids = _netns_pids(netns)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = _netns_pids(netns)
    for _ in range(50):
        if not pids:
            return
        _signal(pids, signal.SIGKILL)
        time.sleep(0.02)
        pids = _netns_pids(netns)
    raise FarmError(f"processes {pids} in network namespace {netns} survive SIGKILL")


def _farm_namespaces() -> list[str]:
    names = (line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip())
    return [name for name in names if _NETNS.match(name)]


def _farm_host_links() -> list[str]:
    links = re.findall(r"^\d+: ([^:@\s]+)", _run(["ip", "-o", "link", "show"]).stdout, flags=re.MULTILINE)
    return [link for link in links if _HOST_LINK.match(link)]


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _delete_link(name: str, timeout: float = 5.0) -> bool:
    """Delete a host link if it exists and wait until it is gone; whether there was one. A veth whose peer's
    namespace is being destroyed disappears by itself, in the background: then deleting it may find nothing."""
    existed = _link_exists(name)
    deadline = time.monotonic() + timeout
    while _link_exists(name):
        _run(["ip", "link", "del", "dev", name], check=False)
        if time.monotonic() > deadline:
            raise FarmError(f"cannot delete link {name}")
        time.sleep(0.01)
    return existed


def _disable_ipv6(netns: str | None, interface: str) -> None:
    """No IPv6 (not even link-local addresses) on a farm interface: a board has its IPv4 /30 and nothing else."""
    path = f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6"
    if netns is None:
        if os.path.exists(path):
            Path(path).write_text("1\n")
    else:  # /proc/sys/net shows the namespace of the process that opens it
        _run(["ip", "netns", "exec", netns, "sh", "-c", f"[ ! -e {path} ] || echo 1 > {path}"])


def _acquire_lock() -> int:
    """The machine's farm lock, as an open descriptor (closing it releases the lock). Another farm (another test
    run on this machine) is waited for, up to ``$REQUESTFLOW_FARM_WAIT_S`` (default 1800 s); then FarmError."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable: sshd never holds it
    deadline = time.monotonic() + float(os.environ.get("REQUESTFLOW_FARM_WAIT_S", "1800"))
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise FarmError(f"another board farm is running on this machine (it holds {LOCK_FILE})") from None
            time.sleep(1.0)


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


class Board:
    """One simulated board: a network namespace, its veth link to the host and an sshd. Made by `Farm`."""

    port = 22
    user = "root"

    def __init__(self, index: int, farm_dir: Path, key_file: Path, authorized_keys: Path, sshd: Path,
                 arm64_rootfs: Path | None = None, shared: Sequence[Path] = ()) -> None:
        self.index = index
        # an arm64 board (issue #15): every command runs as arm64 code, see ARM64_ENTER
        self.arm64_rootfs = arm64_rootfs
        self.shared = [Path(p) for p in shared]
        self.name = f"{PREFIX}{index}"
        self.netns = self.name
        self.host_link = f"{self.name}h"
        self.host = f"{SUBNET}.{index}.2"  # the board's address, where its sshd listens
        self.host_side_ip = f"{SUBNET}.{index}.1"  # the host's end of the link
        self.dir = farm_dir / self.name
        self.work_dir = self.dir / "work"
        self.key_file = key_file
        self.known_hosts = self.dir / "known_hosts"  # this board's entry only
        self.sshd_config = self.dir / "sshd_config"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.pid_file = self.dir / "sshd.pid"
        self.log_file = self.dir / "sshd.log"
        self.host_public_key = ""  # "ssh-ed25519 AAAA...", once created
        self.fingerprint = ""  # "SHA256:...", once created
        self._authorized_keys = authorized_keys
        self._sshd_binary = sshd
        self._sshd: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Board({self.name}, {self.host}, sshd {'up' if self.sshd_running else 'down'})"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.host} {self.host_public_key}"

    @property
    def sshd_running(self) -> bool:
        return self._sshd is not None and self._sshd.poll() is None

    @property
    def sshd_pid(self) -> int | None:
        """The pid of the board's sshd listener, while it runs."""
        return self._sshd.pid if self._sshd is not None and self.sshd_running else None

    def exec_in_netns(
        self, cmd: Sequence[str] | str, *, check: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the board's network namespace (a string goes through `sh -c`); output captured."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return _run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def start_sshd(self, timeout: float = 10.0) -> None:
        """Start the board's sshd (if it is not running) and return once it answers with its SSH banner."""
        if self.sshd_running:
            return
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        # -D: stay in the foreground, a child of ours; -e: log to the board's log file. `unshare --uts` gives the
        # board a hostname of its own; `ip netns exec`, unshare and sh all exec, so the child's pid is sshd's.
        script = 'hostname "$1" && exec "$2" -D -e -f "$3"'
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script, "sh", self.name]
        with self.log_file.open("ab") as log:
            self._sshd = subprocess.Popen(
                [*argv, str(self._sshd_binary), str(self.sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal is the farm's to handle, not sshd's
            )
        self._wait_for_banner(timeout)

    def kill_sshd(self, timeout: float = 5.0) -> None:
        """Stop the board's sshd and everything in its namespace (open sessions and what they started)."""
        if self._sshd is not None and self._sshd.poll() is None:
            self._sshd.terminate()
        _kill_netns_processes(self.netns, timeout)
        if self._sshd is not None:
            self._sshd.wait(timeout)  # reap it
            self._sshd = None
        self.pid_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def read_only(self, path: Path | str) -> Iterator[None]:
        """Make ``path`` read-only as the board sees it, for the ``with`` block: a read-only bind mount in the mount
        namespace of the board's sshd (``ip netns exec`` gave it one of its own), so that every session and process
        the board starts gets EROFS there, root included, while the host (the tests) can still write. A board whose
        sshd is restarted meanwhile is writable again (its new sshd has a new namespace)."""
        pid = self.sshd_pid
        if pid is None:
            raise FarmError(f"sshd of {self.name} is not running")
        enter = ["nsenter", "--target", str(pid), "--mount", "--"]
        _run([*enter, "mount", "--bind", str(path), str(path)])
        try:
            _run([*enter, "mount", "-o", "remount,ro,bind", str(path)])
            yield
        finally:
            if self.sshd_pid == pid:
                _run([*enter, "umount", str(path)], check=False)

    def connection(self, *, known_hosts: Path | None = None, connect_timeout: int = 5) -> fabric.Connection:
        """A Fabric connection as root with the farm's key, checking the host key strictly against `known_hosts`
        (this board's by default): an unknown key is refused (`paramiko.RejectPolicy`), a different one raises
        `paramiko.BadHostKeyException`. No SSH config file, agent or other key is consulted."""
        import fabric
        import paramiko

        conn = fabric.Connection(
            self.host,
            user=self.user,
            port=self.port,
            # An explicit, empty SSH config: ~/.ssh/config is not read. No local stdin is forwarded (there is none
            # under pytest's capture, nor in an Airflow task).
            config=fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={"run": {"in_stream": False}}),
            connect_timeout=connect_timeout,
            connect_kwargs={"key_filename": str(self.key_file), "look_for_keys": False, "allow_agent": False},
        )
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client.get_host_keys().load(str(known_hosts or self.known_hosts))
        return conn

    # Made and unmade by the farm.

    def _create(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.work_dir.mkdir(parents=True)
        _keygen(self.host_key, f"{self.name} host key")
        self.host_public_key = " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])
        fingerprint = _run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key.with_suffix(".pub"))])
        self.fingerprint = fingerprint.stdout.split()[1]
        self.known_hosts.write_text(self.known_hosts_line + "\n")
        if self.arm64_rootfs is not None:
            enter = self.dir / "arm64-enter.sh"
            (self.dir / "arm64-session").mkdir()
            enter.write_text(ARM64_ENTER.format(rootfs=self.arm64_rootfs, session=self.dir / "arm64-session",
                                                shared=" ".join(f"'{p}'" for p in [self.dir.parent, *self.shared])))
            enter.chmod(0o755)
        self.sshd_config.write_text(self._sshd_config_text())

        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        _disable_ipv6(None, self.host_link)
        _disable_ipv6(self.netns, "all")
        _run(["ip", "addr", "add", f"{self.host_side_ip}/30", "dev", self.host_link])
        _run(["ip", "link", "set", self.host_link, "up"])
        _run(["ip", "-n", self.netns, "addr", "add", f"{self.host}/30", "dev", "eth0"])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.netns, "link", "set", "eth0", "up"])
        self.start_sshd()

    def _destroy(self) -> None:
        """Kill the board's processes, delete its link, then its namespace: whatever of them exists."""
        self.kill_sshd()
        _delete_link(self.host_link)
        if self.netns in _farm_namespaces():
            _run(["ip", "netns", "del", self.netns])

    def _sshd_config_text(self) -> str:
        return f"""\
# Board {self.name} of a requestflow test farm, written by tests/farm.py.
Port {self.port}
ListenAddress {self.host}
HostKey {self.host_key}
PidFile {self.pid_file}
AuthorizedKeysFile {self._authorized_keys}
PermitRootLogin prohibit-password
AllowUsers {self.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
UsePAM no
# The farm lives wherever the tests put it (pytest's temporary folders are under the world-writable /tmp), where
# sshd's ownership and mode checks of the authorized_keys path would refuse every key.
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
MaxStartups 64:30:128
LogLevel INFO
""" + (f"ForceCommand {self.dir / 'arm64-enter.sh'}\n" if self.arm64_rootfs is not None else "")

    def _wait_for_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._sshd is not None
            if self._sshd.poll() is not None:
                log = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                raise FarmError(f"sshd of {self.name} exited ({self._sshd.returncode}): " + " | ".join(log))
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise FarmError(f"sshd of {self.name} does not answer on {self.host}:{self.port} after {timeout} s")
            time.sleep(0.02)


class Farm:
    """N simulated boards under `root_dir`, set up on entering and torn down on leaving (also when setup fails
    midway, and idempotently: `close()` may be called any number of times)."""

    def __init__(self, n_boards: int, root_dir: Path | str, *, sshd: Path = SSHD, arm64: Sequence[int] = (),
                 arm64_rootfs: Path | None = None, shared: Sequence[Path] = ()) -> None:
        """``arm64``: the (1-based) boards that are arm64 boards, chrooted into ``arm64_rootfs``
        (``operators.arm64_runner.python_userland``); ``shared``: host folders they see at the same path besides the
        farm's own (the x86 boards see the whole host)."""
        if arm64 and arm64_rootfs is None:
            raise ValueError("arm64 boards need arm64_rootfs")
        if not 1 <= n_boards <= MAX_BOARDS:
            raise ValueError(f"n_boards must be between 1 and {MAX_BOARDS}, not {n_boards}")
        self.dir = Path(root_dir).resolve()
        self.key_file = self.dir / "id_ed25519"  # the client key, for root on every board
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"  # every board's entry
        self.boards = [
            Board(index, self.dir, self.key_file, self.authorized_keys, sshd,
                  arm64_rootfs if index in arm64 else None, shared) for index in range(1, n_boards + 1)
        ]
        self._lock_fd: int | None = None

    def __enter__(self) -> Farm:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Board]:
        return iter(self.boards)

    def __len__(self) -> int:
        return len(self.boards)

    def __getitem__(self, index: int) -> Board:
        return self.boards[index]

    @property
    def running(self) -> bool:
        return self._lock_fd is not None

    def start(self) -> None:
        """Clean up leftovers, then make the boards. On failure, undo everything made so far and raise."""
        if self.running:
            raise FarmError("this farm is already running")
        self._lock_fd = _acquire_lock()
        try:
            self.cleanup_leftovers()
            self._check_subnet_free()
            self.dir.mkdir(parents=True, exist_ok=True)
            _keygen(self.key_file, "requestflow test farm")
            shutil.copyfile(self.key_file.with_suffix(".pub"), self.authorized_keys)
            for board in self.boards:
                board._create()
            self.known_hosts.write_text("".join(board.known_hosts_line + "\n" for board in self.boards))
        except BaseException as error:
            try:
                self.close()
            except FarmError as teardown:
                error.add_note(str(teardown))
            raise

    def close(self) -> None:
        """Tear every board down (whatever part of it exists) and release the farm lock. Idempotent."""
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is None:
            return
        errors: list[str] = []
        for board in self.boards:
            try:
                board._destroy()
            except (FarmError, OSError, subprocess.SubprocessError) as error:
                errors.append(f"{board.name}: {error}")
        try:
            self.cleanup_leftovers()
        except (FarmError, OSError, subprocess.SubprocessError) as error:
            errors.append(str(error))
        os.close(lock_fd)
        if errors:
            raise FarmError("farm teardown incomplete: " + "; ".join(errors))

    @staticmethod
    def cleanup_leftovers() -> list[str]:
        """Remove what any farm left on this machine (a run that crashed): the processes in ``rfb<n>`` namespaces,
        the namespaces, the host links ``rfb<n>h``, and farm sshds whose namespace is gone. Says what it removed.
        Call it only while holding the farm lock (as `Farm.start` and ``python tests/farm.py --cleanup`` do)."""
        removed: list[str] = []
        namespaces = _farm_namespaces()
        for netns in namespaces:
            _kill_netns_processes(netns)
        # Links before namespaces: deleting a veth end deletes its peer at once, while a deleted namespace (and so
        # the veth pair it held) is destroyed by the kernel in the background.
        removed += [f"link {link}" for link in _farm_host_links() if _delete_link(link)]
        for netns in namespaces:
            _run(["ip", "netns", "del", netns])
            removed.append(f"netns {netns}")
        stray = [int(pid) for pid in _run(["pgrep", "-f", _SSHD_CMDLINE], check=False).stdout.split()]
        _signal(stray, signal.SIGKILL)
        removed += [f"sshd {pid}" for pid in stray]
        return removed

    @staticmethod
    def available(sshd: Path = SSHD) -> tuple[bool, str]:
        """Whether a farm can run here, and if not, why not."""
        if not sys.platform.startswith("linux"):
            return False, "network namespaces need Linux"
        if os.geteuid() != 0:
            return False, "needs root (network namespaces, veth pairs, sshd)"
        for tool in ("ip", "ssh-keygen", "unshare", "pgrep"):
            if shutil.which(tool) is None:
                return False, f"`{tool}` not found ({SETUP_HINT})"
        if not os.access(sshd, os.X_OK):
            return False, f"{sshd} not found ({SETUP_HINT})"
        probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            return False, f"cannot create network namespaces: {probe.stderr.strip()}"
        return True, "ok"

    def _check_subnet_free(self) -> None:
        """Refuse to shadow a network this host already uses: no route of the host may touch 10.231.0.0/16."""
        subnet = f"{SUBNET}.0.0/16"
        inside = _run(["ip", "-4", "-o", "route", "show", "root", subnet]).stdout.splitlines()
        covering = _run(["ip", "-4", "-o", "route", "show", "match", subnet]).stdout.splitlines()
        clashes = inside + [route for route in covering if not route.startswith("default")]
        if clashes:
            raise FarmError(f"{subnet} is already routed on this host: {'; '.join(clashes)}")


def require_arm64_board() -> None:
    """Skip (or, in CI or with a tool missing, fail) a test that needs an arm64 board here: the farm's tools and
    root, Linux 6.7 or later (binfmt_misc per user namespace), mmdebstrap and qemu-user-static."""
    import pytest

    ok, reason = Farm.available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"board farm unavailable in CI: {reason}")
        pytest.skip(f"board farm unavailable: {reason}")
    release = os.uname().release.split("-")[0].split(".")
    if (int(release[0]), int(release[1])) < (6, 7):
        pytest.skip(f"Linux {os.uname().release}: binfmt_misc per user namespace needs 6.7")
    absent = [tool for tool in ("mmdebstrap", "qemu-aarch64-static") if shutil.which(tool) is None]
    if absent:
        pytest.fail(f"{', '.join(absent)} not installed (./dev.sh test installs qemu-user-static and mmdebstrap)")


def farm_fixture(
    n_boards: int = 2, *, scope: Literal["session", "package", "module", "class", "function"] = "function"
) -> Callable[..., Any]:
    """A pytest fixture of a running `Farm` of `n_boards` in a fresh temporary folder, skipped (with the reason)
    where a farm cannot run. In a conftest or a test module: ``farm = farm_fixture(2)``, or
    ``big_farm = farm_fixture(4, scope="module")``. Only one farm at a time: don't request two in one test."""
    import pytest

    @pytest.fixture(scope=scope)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
        ok, reason = Farm.available()
        if not ok:
            if os.environ.get("CI"):  # CI installs what the farm needs (dev.sh test): its absence is a failure
                pytest.fail(f"board farm unavailable in CI: {reason}")
            pytest.skip(f"board farm unavailable: {reason}")
        with Farm(n_boards, tmp_path_factory.mktemp("farm")) as farm:
            yield farm

    return fixture


if __name__ == "__main__":
    if sys.argv[1:] != ["--cleanup"]:
        sys.exit(f"usage: {sys.argv[0]} --cleanup   (remove what a crashed board farm left behind)")
    try:
        lock = _acquire_lock()  # never pull a running farm from under its tests
    except FarmError as error:
        sys.exit(str(error))
    print("\n".join(Farm.cleanup_leftovers()) or "nothing to clean up")
    os.close(lock)
