"""What an ArmCL source build needs on a board, installed where the board allows it (issue #17,
``operators/build_tools.py``).

The board-side probe and install commands run for real through the local board (``LocalBoard.run``, a shell) with
``$PATH`` a folder of stand-ins: an ``id`` saying who the board's user is, a ``sudo`` that records what it was asked
(or wants a password), an ``apt-get`` / ``dnf`` that records its arguments and "installs" a scons and a g++ into that
folder. Nothing is installed on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from operators.armcl_spec import ArmclSource, ArmclSpec
from operators.board_hook import LocalBoard
from operators.board_settings import BoardSettings
from operators.build_tools import Probe, ensure_build_tools, install_commands, needed_tools, refusal
from requestflow.errors import UserError

TARBALL = ArmclSpec(source=ArmclSource.tarball("/nonexistent/armcl.tar.xz", "0" * 64), options={"opencl": 1})
MANAGER = """#!/bin/sh
echo "${{0##*/}} $*" >> "{log}"
case " $* " in *" {fail} "*) echo "E: Unable to locate package {fail}" >&2; exit 100;; esac
case " $* " in *" install "*)
  for tool in scons g++ ccache; do printf '#!/bin/sh\\n' > "{bin}/$tool"; /bin/chmod +x "{bin}/$tool"; done;;
esac
"""
SUDO_OK = """#!/bin/sh
echo "sudo $*" >> "{log}"
[ "$1" = -n ] && shift
exec "$@"
"""
SUDO_PASSWORD = """#!/bin/sh
echo "sudo $*" >> "{log}"
echo "sudo: a password is required" >&2
exit 1
"""


def script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def board_path(tmp_path, monkeypatch):
    """``make(uid=..., sudo=..., manager=..., fail=...)``: $PATH is a folder holding sh, true and only the given
    stand-ins; returns (the local board, the log of what sudo and the package manager were asked)."""
    def make(*, uid: int = 1000, sudo: str | None = SUDO_OK, manager: str | None = "apt-get", fail: str = "-",
             install_packages: bool = True):
        folder = tmp_path / "bin"
        folder.mkdir()
        log = tmp_path / "asked.log"
        log.touch()
        for tool in ("sh", "true"):
            os.symlink(f"/bin/{tool}", folder / tool)
        script(folder / "id", f'#!/bin/sh\n[ "$1" = -u ] && echo {uid} || echo {"root" if uid == 0 else "builder"}\n')
        if sudo is not None:
            script(folder / "sudo", sudo.format(log=log))
        if manager is not None:
            script(folder / manager, MANAGER.format(log=log, bin=folder, fail=fail))
        monkeypatch.setenv("PATH", str(folder))
        board = LocalBoard()
        board.settings = dataclasses.replace(board.settings, install_packages=install_packages)
        return board, log
    return make


def asked(log: Path) -> list[str]:
    return log.read_text().splitlines()


class TestWhatIsNeeded:
    def test_a_source_build_needs_scons_and_a_compiler_opencl_wants_its_loader_and_headers(self):
        assert needed_tools(TARBALL) == (["scons", "c++"], ["ccache", "opencl-icd-loader", "opencl-headers"])
        assert needed_tools(ArmclSpec(source="debian")) == (["scons", "c++"], ["ccache"])
        assert needed_tools(ArmclSpec(source=ArmclSource.git())) == (["scons", "c++", "git"], ["ccache"])
        assert needed_tools(ArmclSpec(source={"kind": "debian-binary", "suite": "trixie"})) == ([], [])

    def test_the_install_commands_never_prompt(self):
        assert install_commands("apt-get", ["scons", "g++"], root=False) == [
            "sudo -n apt-get -q update </dev/null",
            "sudo -n apt-get -q -y --no-install-recommends install scons g++ </dev/null"]
        assert install_commands("dnf", ["python3-scons", "gcc-c++"], root=True) == [
            "dnf -q -y install python3-scons gcc-c++ </dev/null"]

    def test_the_refusal_names_the_exact_packages_of_the_boards_package_manager(self):
        debian = Probe(frozenset({"ccache"}), manager="apt-get", user="builder")
        assert refusal("ArmCL 24.11's build", ["scons", "c++"], debian) == (
            "ArmCL 24.11's build needs scons, g++, not found on the board: install scons g++ (`sudo apt-get install "
            "scons g++`), or set the board's Connection extra install_packages true (the local board: \"local\": "
            "{\"install_packages\": true} in config/boards.json) to let provisioning install them through sudo -n")
        fedora = Probe(frozenset(), cxx="clang++", manager="dnf", root=True)
        assert "needs scons, clang++, not found on the board: install python3-scons gcc-c++ (`dnf install " \
               "python3-scons gcc-c++`)" in refusal("the build", ["scons", "c++"], fedora)


class TestOnABoard:
    def test_without_install_packages_the_build_is_refused_naming_the_packages(self, board_path):
        board, log = board_path(install_packages=False)
        with pytest.raises(UserError, match=r"^the build needs scons, g\+\+, not found on the board: install "
                                            r"scons g\+\+ \(`sudo apt-get install scons g\+\+`\)"):
            ensure_build_tools(board, TARBALL, what="the build", log=lambda line: None)
        assert asked(log) == []  # nothing tried

    def test_install_packages_installs_through_sudo_n(self, board_path):
        board, log = board_path()
        lines = []
        probe = ensure_build_tools(board, TARBALL, log=lines.append)
        assert asked(log) == ["sudo -n true", "sudo -n apt-get -q update",
                              "apt-get -q update",
                              "sudo -n apt-get -q -y --no-install-recommends install scons g++ ccache",
                              "apt-get -q -y --no-install-recommends install scons g++ ccache"]
        assert {"scons", "c++", "ccache"} <= probe.have and probe.user == "builder" and not probe.root
        assert lines == ["board local: installing scons g++ ccache with apt-get through sudo -n"]

    def test_a_sudo_that_wants_a_password_is_reported_and_nothing_installed(self, board_path):
        board, log = board_path(sudo=SUDO_PASSWORD)
        with pytest.raises(UserError, match=r"cannot install scons g\+\+ ccache: `sudo -n` refused user builder "
                                            r"\(sudo: a password is required\); provisioning never types a password"):
            ensure_build_tools(board, TARBALL, log=lambda line: None)
        assert asked(log) == ["sudo -n true"]

    def test_root_installs_without_sudo(self, board_path):
        board, log = board_path(uid=0, sudo=None, manager="dnf")
        ensure_build_tools(board, ArmclSpec(source="debian"), log=lambda line: None)
        assert asked(log) == ["dnf -q -y install python3-scons gcc-c++ ccache"]

    def test_a_user_without_sudo_is_told_to_install_as_root(self, board_path):
        board, log = board_path(sudo=None)
        with pytest.raises(UserError, match=r"user builder is not root and the board has no sudo; install them as "
                                            r"root \(apt-get install scons g\+\+ ccache\)"):
            ensure_build_tools(board, ArmclSpec(source="debian"), log=lambda line: None)

    def test_a_failed_install_says_the_package_managers_words(self, board_path):
        board, log = board_path(uid=0, fail="scons")
        with pytest.raises(RuntimeError, match=r"board local: `apt-get -q -y --no-install-recommends install scons "
                                               r"g\+\+ ccache` exited 100: E: Unable to locate package scons"):
            ensure_build_tools(board, ArmclSpec(source="debian"), log=lambda line: None)

    def test_a_board_without_a_known_package_manager(self, board_path):
        board, log = board_path(manager=None)
        with pytest.raises(UserError, match=r"no package manager .*\(apt-get, dnf, yum\) on its PATH"):
            ensure_build_tools(board, ArmclSpec(source="debian"), log=lambda line: None)

    def test_the_build_operator_refuses_before_fetching_anything(self, board_path, monkeypatch, tmp_path):
        """The board's refusal is the build's error, stored for its points; the source is never resolved."""
        from operators import results_hook
        from operators.armcl_build import ArmclBuildFailed, ArmclBuildOperator

        board_path(install_packages=False)
        stored = []
        monkeypatch.setattr(results_hook, "fail_points_on_last_attempt",
                            lambda operator, context, points, exc: stored.append((points, str(exc))))
        points = [{"model": "mobilenet-v1-0.25-128", "backend": "armcl", "mode": "performance", "armcl_build": "b"}]
        operator = ArmclBuildOperator(task_id="armcl_b", board_conn_id="local", spec=TARBALL.to_dict(), points=points,
                                      build_name="b", source_cache_dir=str(tmp_path / "sources"))
        with pytest.raises(ArmclBuildFailed, match=r"^board local: ArmCL 24\.11's build needs scons, g\+\+"):
            operator.execute({"run_id": "r", "ti": None, "dag": None})
        assert stored == [(points, stored[0][1])] and "install scons g++" in stored[0][1]
        assert not (tmp_path / "sources").exists()


class TestTheSetting:
    def test_a_connection_extra(self):
        class Conn:
            host, login, port, password = "board", "pi", 22, None
            extra_dejson = {"key_file": "/k", "no_host_key_check": True, "install_packages": "true"}

        assert BoardSettings.from_connection("b", Conn).install_packages is True
        Conn.extra_dejson = {**Conn.extra_dejson, "install_packages": "maybe"}
        with pytest.raises(UserError, match="extra 'install_packages' must be true or false, got 'maybe'"):
            BoardSettings.from_connection("b", Conn)

    def test_the_local_board_reads_config_boards_json(self, tmp_path, monkeypatch):
        from operators import config

        assert LocalBoard().settings.install_packages is False  # the checkout's config/boards.json
        monkeypatch.setattr(config, "CONFIG", tmp_path)
        (tmp_path / "boards.json").write_text(json.dumps({"boards": ["local"], "local": {"install_packages": True}}))
        assert LocalBoard().settings.install_packages is True
        (tmp_path / "boards.json").write_text(json.dumps({"boards": ["local"], "local": {"sudo_password": "x"}}))
        with pytest.raises(ValueError, match="unknown setting 'sudo_password' of the local board; known: "
                                             "install_packages"):
            LocalBoard()
