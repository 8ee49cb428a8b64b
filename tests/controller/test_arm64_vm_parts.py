"""The arm64 VM board's parts that need no VM (tests/arm64_vm.py, tests/arm64_vm_cli.py; issue #15, item 5): the
cached image is checked file by file (a damaged one is made again), the QEMU command line, the export lines a user
evals, and why the board's Connection must say ``emulator``: a full-system emulator is invisible from inside."""

from __future__ import annotations

import json
import shlex

from requestflow.board.emulation import SETTING, detect
from tests.arm64_vm import FILES, VM, Image, check_image, qemu_command
from tests.arm64_vm_cli import export_lines

# /proc/cpuinfo inside the VM (qemu-system-aarch64 -M virt -cpu cortex-a72, TCG): an Arm CPU like a real board's
CORTEX_A72 = """processor\t: 0
BogoMIPS\t: 125.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""


def _image(folder) -> Image:
    from requestflow.board.files import sha256_file

    for name in FILES:
        (folder / name).write_text(f"{name}\n" if name != "ssh_host_ed25519_key.pub" else
                                   "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA arm64-vm host\n")
    record = {"key": "k", "files": {name: sha256_file(folder / name) for name in FILES}}
    (folder / "image.json").write_text(json.dumps(record))
    return Image("k", folder, record, True)


def test_a_cached_image_is_checked_file_by_file(tmp_path):
    assert check_image(tmp_path / "none") == "not made yet"
    image = _image(tmp_path)
    assert check_image(tmp_path) is None
    image.rootfs.write_text("rootfs.img, one byte changed\n")
    assert check_image(tmp_path) == "rootfs.img is damaged (sha256 differs from image.json)"
    image.rootfs.unlink()
    assert check_image(tmp_path) == "rootfs.img is missing"
    (tmp_path / "image.json").unlink()
    assert check_image(tmp_path) == "incomplete (no image.json)"


def test_the_vm_is_tcg_with_its_root_read_only_and_ssh_on_loopback_only(tmp_path):
    image = _image(tmp_path)
    argv = qemu_command(image, tmp_path / "work.img", 2222, tmp_path / "console.log")
    line = shlex.join(argv)
    assert argv[0] == "qemu-system-aarch64" and "-M virt -cpu cortex-a72 -smp 2 -m 2048" in line
    assert "-accel tcg,thread=multi" in line
    assert f"file={image.rootfs},format=raw,snapshot=on" in line
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in line and "virtio-net-pci,netdev=n0,romfile=" in line
    extra = VM(image, tmp_path, port=2222).extra()
    assert extra["emulator"] == "qemu-system-tcg" and extra["host_key"].startswith("ssh-ed25519 AAAA")
    assert extra["python"] == "/usr/bin/python3.11"


def test_the_export_lines_name_the_board_arm64_vm_and_its_port():
    ready = {"host": "127.0.0.1", "port": 2222, "extra": {"emulator": "qemu-system-tcg"}}
    connection, boards = export_lines(ready)
    assert boards == "export REQUESTFLOW_BOARDS=local,arm64_vm"
    name, _, value = connection.removeprefix("export ").partition("=")
    assert name == "AIRFLOW_CONN_ARM64_VM"  # a shell variable's name: no "-"
    assert json.loads(shlex.split(value)[0])["port"] == 2222


def test_inside_a_full_system_emulator_only_the_boards_setting_can_say_emulated(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CORTEX_A72)
    python = tmp_path / "python3.11"  # an aarch64 ELF header: e_machine 183
    python.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (2).to_bytes(2, "little") + (183).to_bytes(2, "little"))
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.delenv("REQUESTFLOW_EMULATOR", raising=False)
    monkeypatch.setattr("sys.prefix", str(tmp_path))  # no requestflow-emulated marker there
    assert detect(cpuinfo, executable=str(python)) is None  # an Arm CPU running Arm code: it looks real
    monkeypatch.setenv(SETTING, "qemu-system-tcg")
    found = detect(cpuinfo, executable=str(python))
    assert found["emulator"] == "qemu-system-tcg" and found["evidence"] == [f"${SETTING}=qemu-system-tcg"]
    assert found["cpu_arch"] == found["python_arch"] == "aarch64"
