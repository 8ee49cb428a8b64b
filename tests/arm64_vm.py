"""A real arm64 Linux board, opt-in (issue #15, item 5): a full arm64 VM under ``qemu-system-aarch64`` (TCG: every
instruction emulated), made once and cached, booted as the board ``arm64-vm`` (``./dev.sh farm up arm64-vm``,
``tests/arm64_vm_keeper.py``; ``tests/integration/test_arm64_vm.py``).

The image (``vm_image()``), cached under ``<arm64 cache>/vms/<key>/`` (``operators.arm64_toolchain.made_once``):

* ``rootfs.img``: Debian bookworm arm64 (``mmdebstrap --variant=minbase`` with systemd, openssh-server, python3
  (3.11: the aarch64 runner bundle's pins are made for it), Debian's ``linux-image-arm64``), made into an ext4
  image with ``mke2fs -d`` (no loop device, no mount). The packages' maintainer scripts run as arm64 code under
  qemu-user, through a binfmt_misc instance of a user namespace of our own (Linux >= 6.7, as the farm's arm64 board):
  the host's binfmt_misc stays untouched, no second stage inside the VM (the issue's ~23 min first boot). apt in
  mmdebstrap checks every package against bookworm's signed InRelease.
* ``vmlinuz``, ``initrd.img``: the kernel and its initramfs from the image's ``/boot`` (the initramfs made by
  initramfs-tools in the image, ``MODULES=list``: virtio_pci, virtio_blk, ext4 loaded before the root is mounted).
* ``id_ed25519`` (root's key on the VM) and ``ssh_host_ed25519_key.pub`` (the VM's only host key), made for the
  image: the Connection pins the host key.
* ``image.json``: what it was made of and every file's sha256, checked on every use: a damaged image is made again.

The VM boots the image read-only (``snapshot=on``: what the VM writes to its root is gone at power-off) and a work
disk of its own (``/work``, ext4, a sparse file in the keeper's folder, kept across boots: the deployed runner and
data are reused).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from operators.arm64_toolchain import KEYRING, MIRROR, ToolchainError, made_once, run_tool

Log = Callable[[str], None]

SUITE = "bookworm"  # CPython 3.11, as the aarch64 bundle's pins; bookworm's 6.1 kernel is a gzip Image QEMU 7.2 boots
PACKAGES = ("systemd-sysv", "udev", "kmod", "openssh-server", "python3", "python3-venv", "python3.11-venv",
            "linux-image-arm64", "initramfs-tools", "zstd", "e2fsprogs", "iproute2", "procps", "ca-certificates",
            "libstdc++6")
BOARD_PYTHON = "/usr/bin/python3.11"
WORK_DIR = "/work/requestflow"
FILES = ("rootfs.img", "vmlinuz", "initrd.img", "id_ed25519", "ssh_host_ed25519_key.pub")
IMAGE_FORMAT = 1
QEMU = "qemu-system-aarch64"
# the initramfs loads these before it mounts the root (ext4 on virtio-blk); everything else udev finds later
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"

# Run inside a user and mount namespace of our own whose ids 0-65535 are the host's (root's mmdebstrap chowns
# files to the packages' users): a private binfmt_misc instance hands aarch64 ELF files to qemu-aarch64-static.
_IN_NAMESPACE = f"""set -e
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf '%s' ':qemu-aarch64:M::{_MAGIC}:{_MASK}:/usr/bin/qemu-aarch64-static:FP' > /proc/sys/fs/binfmt_misc/register
exec "$@"
"""

# mmdebstrap's hooks ($1: the new root). Before the kernel's package: the initramfs's modules
_ESSENTIAL_HOOK = """set -e
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
echo MODULES=list > "$1/etc/initramfs-tools/conf.d/requestflow-vm"
cat > "$1/etc/initramfs-tools/hooks/requestflow-vm" <<'EOF'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for module in {modules}; do force_load "$module"; done
EOF
chmod 755 "$1/etc/initramfs-tools/hooks/requestflow-vm"
"""
# after every package: the board's name, disks, network (DHCP from QEMU's user network), ssh (the image's keys)
_CUSTOMIZE_HOOK = """set -e
root=$1 keys=$2
echo arm64-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\\n127.0.1.1 arm64-vm\\n' > "$root/etc/hosts"
printf '/dev/vda / ext4 defaults 0 1\\nLABEL=rfwork /work ext4 defaults,nofail 0 2\\n' > "$root/etc/fstab"
mkdir -p "$root/work"
printf '[Match]\\nName=en* eth*\\n[Network]\\nDHCP=ipv4\\n' > "$root/etc/systemd/network/10-vm.network"
chroot "$root" systemctl enable systemd-networkd
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \\
    fstrim.timer systemd-networkd-wait-online.service
rm -f "$root"/etc/ssh/ssh_host_*
cp "$keys/ssh_host_ed25519_key" "$keys/ssh_host_ed25519_key.pub" "$root/etc/ssh/"
chmod 600 "$root/etc/ssh/ssh_host_ed25519_key"
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\\nPermitRootLogin prohibit-password\\nPasswordAuthentication no\\n\
UseDNS no\\n' > "$root/etc/ssh/sshd_config.d/requestflow-vm.conf"
mkdir -p -m 700 "$root/root/.ssh"
cp "$keys/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
chmod 600 "$root/root/.ssh/authorized_keys"
"""


@dataclass(frozen=True)
class Image:
    """A complete, checked VM image: ``folder`` holds ``FILES`` and ``image.json``."""

    key: str
    folder: Path
    record: dict
    reused: bool

    def __getattr__(self, name: str) -> Path:
        file = {"rootfs": "rootfs.img", "kernel": "vmlinuz", "initrd": "initrd.img", "key_file": "id_ed25519"}
        if name in file:
            return self.folder / file[name]
        raise AttributeError(name)

    @property
    def host_key(self) -> str:
        return " ".join((self.folder / "ssh_host_ed25519_key.pub").read_text().split()[:2])


def available() -> str | None:
    """None when this machine can make and boot the VM; else why not."""
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, a user namespace with its own binfmt_misc)"
    release = os.uname().release.split("-")[0].split(".")
    if (int(release[0]), int(release[1])) < (6, 7):
        return f"Linux {os.uname().release}: binfmt_misc per user namespace needs 6.7"
    absent = [tool for tool in (QEMU, "qemu-aarch64-static", "mmdebstrap", "arch-test", "mke2fs", "ssh-keygen")
              if shutil.which(tool) is None]
    if absent:
        return (f"{', '.join(absent)} not installed (./dev.sh farm up arm64-vm installs qemu-system-arm, "
                f"qemu-user-static, mmdebstrap, arch-test)")
    return None


def vm_image(cache_dir: str | os.PathLike | None = None, *, mirror: str = MIRROR, log: Log = print) -> Image:
    """The VM image, made once (about TODO min here) and checked on each use (every file's sha256)."""
    spec = {"format": IMAGE_FORMAT, "suite": SUITE, "mirror": mirror, "architectures": ["arm64"],
            "variant": "minbase", "packages": list(PACKAGES), "initramfs_modules": list(INITRAMFS_MODULES)}

    def make(staged: Path) -> dict:
        return _make(staged, mirror, log)

    key, folder, record, reused = made_once(cache_dir, "vms", spec, "image.json", check_image, make,
                                             "the arm64 VM image", log)
    return Image(key, folder, record, reused)


def check_image(folder: Path) -> str | None:
    """None when ``folder`` holds a complete image whose files match ``image.json``; else what is wrong."""
    from requestflow.board.files import sha256_file

    if not (folder / "image.json").is_file():
        return "incomplete (no image.json)" if folder.exists() else "not made yet"
    try:
        files = json.loads((folder / "image.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return "image.json is damaged"
    for name in FILES:
        if not (folder / name).is_file():
            return f"{name} is missing"
        if sha256_file(folder / name) != files.get(name):
            return f"{name} is damaged (sha256 differs from image.json)"
    return None


def in_binfmt_namespace(command: list[str], what: str, timeout: float = 3600) -> None:
    """``command`` as root of a new user and mount namespace (ids 0-65535 mapped to the host's) whose own
    binfmt_misc runs aarch64 programs with qemu-aarch64-static; the host's binfmt_misc is not touched."""
    wait = 'while [ "$(id -u)" != 0 ]; do sleep 0.02; done; exec sh -c "$0" sh "$@"'
    child = subprocess.Popen(["unshare", "--user", "--mount", "--propagation", "private", "--fork", "sh", "-c", wait,
                              _IN_NAMESPACE, *command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    try:
        ours = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{child.pid}/ns/user") == ours:
            if time.monotonic() > deadline:
                raise ToolchainError(f"{what}: unshare made no user namespace")
            time.sleep(0.01)
        for ids in ("uid_map", "gid_map"):
            Path(f"/proc/{child.pid}/{ids}").write_text("0 0 65536\n")
        output, _ = child.communicate(timeout=timeout)
    except BaseException:
        child.kill()
        child.wait()
        raise
    if child.returncode != 0:
        lines = [line for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "Err:", "error", "dpkg:", "W: "))] or lines[-8:]
        raise ToolchainError(f"{what} failed ({child.returncode}): " + " | ".join(errors[-8:]))


def _make(staged: Path, mirror: str, log: Log) -> dict:
    from requestflow.board.files import sha256_file

    started = time.monotonic()
    for name, comment in (("id_ed25519", "requestflow arm64-vm root"), ("ssh_host_ed25519_key", "arm64-vm host")):
        run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(staged / name)],
                 "ssh-keygen")
    hooks = staged / "hooks"
    hooks.mkdir()
    (hooks / "essential.sh").write_text(_ESSENTIAL_HOOK.format(modules=" ".join(INITRAMFS_MODULES)))
    (hooks / "customize.sh").write_text(_CUSTOMIZE_HOOK)
    root = staged / "rootfs"
    log(f"arm64 VM image: mmdebstrap {SUITE} arm64 (maintainer scripts under qemu-user) with {', '.join(PACKAGES)}")
    in_binfmt_namespace(["mmdebstrap", "--mode=root", "--variant=minbase", "--architectures=arm64",
                         f"--keyring={KEYRING}", f"--include={','.join(PACKAGES)}",
                         f"--essential-hook=sh {hooks / 'essential.sh'} \"$1\"",
                         f"--customize-hook=sh {hooks / 'customize.sh'} \"$1\" {staged}",
                         SUITE, str(root), mirror], "mmdebstrap (the arm64 VM's rootfs)")
    debootstrapped = time.monotonic() - started
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ToolchainError(f"the VM's rootfs has {len(kernels)} kernels in /boot, not one")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ToolchainError(f"the VM's rootfs has no initramfs for {version}")
    shutil.copyfile(kernels[0], staged / "vmlinuz")
    shutil.copyfile(initrd, staged / "initrd.img")
    (staged / "ssh_host_ed25519_key").unlink()  # the VM's own copy is in its rootfs
    used = int(run_tool(["du", "-s", "-B1", "-x", str(root)], "du").split()[0])
    size_mb = int(used * 1.3 / 2**20) + 512
    run_tool(["mke2fs", "-q", "-t", "ext4", "-L", "rfroot", "-d", str(root), str(staged / "rootfs.img"),
              f"{size_mb}M"], "mke2fs -d (the VM's root filesystem)")
    shutil.rmtree(root)
    shutil.rmtree(hooks)
    files = {name: sha256_file(staged / name) for name in FILES}
    log(f"arm64 VM image: kernel {version}, root {size_mb} MB ({used / 2**20:.0f} MB used), "
        f"mmdebstrap {debootstrapped:.0f} s, all {time.monotonic() - started:.0f} s")
    return {"kernel": version, "files": files, "rootfs_mb": size_mb, "mmdebstrap_s": round(debootstrapped, 1),
            "verified_by": f"apt in mmdebstrap: every package against the signed InRelease of {SUITE} ({KEYRING}); "
                           "on each use: every file's sha256 against image.json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def qemu_command(image: Image, work_disk: Path, port: int, console: Path, *, smp: int = 2,
                 memory_mb: int = 2048) -> list[str]:
    """The VM: QEMU's ``virt`` machine with a Cortex-A72 (TCG, a thread per vCPU), the image's kernel and
    initramfs, its root read-only underneath (``snapshot=on``), the work disk, ssh forwarded from
    127.0.0.1:``port`` only (QEMU's user network: the VM reaches nothing but QEMU's own DHCP)."""
    return [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-smp", str(smp), "-m", str(memory_mb),
            "-accel", "tcg,thread=multi", "-nodefaults", "-display", "none", "-monitor", "none",
            "-serial", f"file:{console}", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", "root=/dev/vda rw rootwait console=ttyAMA0",
            "-drive", f"if=none,id=root,file={image.rootfs},format=raw,snapshot=on",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"if=none,id=work,file={work_disk},format=raw", "-device", "virtio-blk-pci,drive=work",
            "-netdev", f"user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci"]


def work_disk(folder: Path, size_gb: int = 24) -> Path:
    """The VM's ``/work`` disk in ``folder`` (a sparse file with ext4 labelled rfwork), made when missing."""
    disk = folder / "work.img"
    if not disk.is_file():
        staged = folder / ".work.img"
        staged.unlink(missing_ok=True)
        with staged.open("wb") as handle:
            handle.truncate(size_gb * 2**30)
        run_tool(["mke2fs", "-q", "-t", "ext4", "-L", "rfwork", str(staged)], "mke2fs (the VM's work disk)")
        os.replace(staged, disk)
    return disk


class VM:
    """The image booted: ``start()`` returns once root logs in over ssh; ``stop()`` syncs its disks and ends it."""

    def __init__(self, image: Image, folder: Path, port: int | None = None) -> None:
        self.image = image
        self.folder = Path(folder)
        self.port = port or free_port()
        self.console = self.folder / "console.log"
        self.process: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}

    def extra(self) -> dict:
        """The board Connection's extras (``emulator``: every result of this board is labelled emulated; inside a
        full-system emulator /proc/cpuinfo describes the emulated Arm CPU, so only this setting can say so)."""
        return {"key_file": str(self.image.key_file), "host_key": self.image.host_key, "work_dir": WORK_DIR,
                "python": BOARD_PYTHON, "emulator": "qemu-system-tcg"}

    def start(self, timeout_s: float = 900, log: Log = print) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        disk = work_disk(self.folder)
        self.console.unlink(missing_ok=True)
        started = time.monotonic()
        self.process = subprocess.Popen(qemu_command(self.image, disk, self.port, self.console),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=(self.folder / "qemu.log").open("ab"), env={**os.environ,
                                                                                          "TMPDIR": str(self.folder)})
        log(f"arm64 VM: booting ({QEMU} pid {self.process.pid}, ssh on 127.0.0.1:{self.port}, console "
            f"{self.console})")
        deadline = started + timeout_s
        while True:
            if self.process.poll() is not None:
                raise ToolchainError(f"{QEMU} exited ({self.process.returncode}): "
                                     f"{(self.folder / 'qemu.log').read_text(errors='replace')[-500:]}")
            if self.console.is_file() and "login:" in self.console.read_text(errors="replace"):
                self.timings.setdefault("login prompt", time.monotonic() - started)
            if self.banner() and self.ssh("true", timeout=20) == 0:
                break
            if time.monotonic() > deadline:
                tail = self.console.read_text(errors="replace")[-800:] if self.console.is_file() else ""
                self.stop()
                raise ToolchainError(f"the arm64 VM did not let root in over ssh in {timeout_s:.0f} s: {tail}")
            time.sleep(3)
        self.timings["ssh"] = time.monotonic() - started
        log("arm64 VM: up, " + ", ".join(f"{k} at {v:.0f} s" for k, v in self.timings.items()))

    def banner(self) -> bool:
        """Whether the VM's sshd answers (QEMU accepts the connection as soon as it runs, then closes it)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.settimeout(10)
                return sock.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def ssh(self, command: str, timeout: float = 60) -> int:
        """``command`` as root on the VM (host key pinned); its exit status, or -1 when it could not connect."""
        import base64

        import paramiko

        client = paramiko.SSHClient()
        key_type, key = self.image.host_key.split()
        client.get_host_keys().add(f"[127.0.0.1]:{self.port}", key_type,
                                   paramiko.PKey.from_type_string(key_type, base64.b64decode(key)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect("127.0.0.1", port=self.port, username="root", key_filename=str(self.image.key_file),
                           allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout)
            _, stdout, _ = client.exec_command(command, timeout=timeout)
            return stdout.channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError):
            return -1
        finally:
            client.close()

    def stop(self, timeout_s: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.ssh("sync", timeout=10)  # the work disk's writes reach the file; its journal does the rest
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
