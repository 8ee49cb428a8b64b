"""Emulation is detected and labelled (issue #15, ``requestflow.board.emulation``): a runner under qemu-user (its
Python aarch64 code, ``/proc/cpuinfo`` the x86 host's), an explicit ``$REQUESTFLOW_EMULATED``, or native programs
run through ``$REQUESTFLOW_EMULATOR`` make ``machine.emulated``, and the quality verdict of such a performance
run is EMULATED whatever its samples look like. No root, no qemu needed: the ELF files and cpuinfo texts are
written here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from requestflow.board import emulation, quality
from requestflow.board.emulation import SETTING, cpuinfo_arch, detect, elf_arch, program_launch
from requestflow.board.machine import machine_info
from requestflow.board.runner import RunConfig, run
from requestflow.board.schema import validate_document

X86 = """processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr lm constant_tsc\n"""
HIKEY960 = """processor\t: 0\nBogoMIPS\t: 3.84\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\n"""
ARMV7 = """processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nFeatures\t: half thumb fastmult vfp edsp neon
CPU implementer\t: 0x41\nCPU architecture: 7\n"""


def elf(path, machine: int):
    """A file with a 64-bit little-endian ELF header for ``machine`` (183 aarch64, 62 x86_64)."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header))
    return path


@pytest.fixture(autouse=True)
def _no_emulation_settings(monkeypatch):
    monkeypatch.delenv(emulation.ENV, raising=False)
    monkeypatch.delenv(SETTING, raising=False)


class TestWhatCodeIsFor:
    def test_elf_machines(self, tmp_path):
        assert elf_arch(elf(tmp_path / "a", 183)) == "aarch64"
        assert elf_arch(elf(tmp_path / "x", 62)) == "x86_64"
        assert elf_arch(sys.executable) == "x86_64"  # this machine's Python (the tests run on x86_64)
        (tmp_path / "script").write_text("#!/bin/sh\n")
        assert elf_arch(tmp_path / "script") is None

    @pytest.mark.parametrize("text, arch", [(X86, "x86_64"), (HIKEY960, "aarch64"), (ARMV7, "armv7l"),
                                            ("isa\t\t: rv64imafdc\n", "riscv64"), ("nothing\n", None)])
    def test_cpuinfo(self, text, arch):
        assert cpuinfo_arch(text) == arch


class TestDetection:
    def test_a_native_runner_is_not_emulated(self):
        assert detect() is None
        assert machine_info(with_opencl=False)["emulated"] is None

    def test_an_aarch64_python_on_an_x86_cpu_is_qemu_user(self, tmp_path):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(X86)
        found = detect(cpuinfo, executable=str(elf(tmp_path / "python3.11", 183)))
        assert found["python_arch"] == "aarch64" and found["cpu_arch"] == "x86_64"
        assert found["evidence"] == [f"the runner's Python is aarch64 code and {cpuinfo} describes an x86_64 CPU"]
        assert found["emulator"].startswith("unknown")

    def test_a_real_arm_board_and_a_32_bit_userland_are_not(self, tmp_path):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(HIKEY960)
        assert detect(cpuinfo, executable=str(elf(tmp_path / "python", 183))) is None
        arm32 = bytearray(elf(tmp_path / "python32", 40).read_bytes())
        arm32[4] = 1  # ELFCLASS32: armhf Python on an aarch64 kernel runs natively
        (tmp_path / "python32").write_bytes(bytes(arm32))
        assert detect(cpuinfo, executable=str(tmp_path / "python32")) is None

    def test_the_explicit_setting(self, monkeypatch):
        monkeypatch.setenv(SETTING, "qemu-user")
        found = detect()
        assert found["emulator"] == "qemu-user" and found["evidence"] == [f"${SETTING}=qemu-user"]
        assert machine_info(with_opencl=False)["emulated"]["emulator"] == "qemu-user"

    def test_the_boards_setting_written_into_the_runners_venv(self, monkeypatch, tmp_path):
        """Provisioning writes a board Connection's extra ``emulator`` there (operators.deploy): every command of
        that runner is labelled, whoever starts it, with no environment variable."""
        assert emulation.board_setting(tmp_path) is None
        (tmp_path / emulation.MARKER).write_text("qemu-user\n")
        monkeypatch.setattr(sys, "prefix", str(tmp_path))
        found = detect()
        assert found["emulator"] == "qemu-user"
        assert found["evidence"] == [f"the board's settings say emulator qemu-user ({tmp_path / emulation.MARKER})"]

    def test_an_exec_prefix_is_described_with_its_version(self, monkeypatch):
        monkeypatch.setenv(emulation.ENV, f"{sys.executable} -I")
        found = detect()
        assert found["evidence"] == ["native programs run through $REQUESTFLOW_EMULATOR"]
        assert found["emulator"].startswith("python") and found["version"].startswith("Python 3.11")

    def test_a_foreign_program_needs_the_emulator(self, tmp_path, monkeypatch):
        program = elf(tmp_path / "mobilenet", 183)
        with pytest.raises(ValueError, match="is aarch64 code and this machine is x86_64: set \\$REQUESTFLOW_EMULATOR"):
            program_launch(program)
        native = tmp_path / "native"
        native.write_bytes(open(sys.executable, "rb").read(64))
        assert program_launch(native) == ([str(native)], None)
        monkeypatch.setenv(emulation.ENV, "qemu-aarch64-static -L /srv/arm64")
        command, record = program_launch(program)
        assert command == ["qemu-aarch64-static", "-L", "/srv/arm64", str(program)]
        assert record["program_arch"] == "aarch64" and record["host_arch"] == "x86_64"


class TestTheVerdict:
    QUIET = list(np.random.default_rng(3).lognormal(np.log(0.01), 0.01, 40))

    def test_quiet_samples_are_valid_natively_and_emulated_under_an_emulator(self):
        assert quality.assess(self.QUIET)["verdict"] == "VALID"
        verdict = quality.assess(self.QUIET, emulated={"emulator": "qemu-user", "version": None})
        assert verdict["verdict"] == "EMULATED" and verdict["emulated"] == {"emulator": "qemu-user", "version": None}
        assert verdict["reasons"] == ["emulated (qemu-user): these timings are the emulator's, not a measurement of "
                                      "any CPU"]
        assert all(check["ok"] for check in verdict["checks"].values())  # the checks still ran

    def test_the_other_checks_failures_are_listed_after_it(self):
        verdict = quality.assess(self.QUIET[:5], emulated={"emulator": "qemu-aarch64-static",
                                                           "version": "qemu-aarch64 version 7.2.22"})
        assert verdict["verdict"] == "EMULATED" and len(verdict["reasons"]) == 2
        assert verdict["reasons"][0].startswith("emulated (qemu-aarch64 version 7.2.22)")
        assert "too few" in verdict["reasons"][1]


def test_a_runner_that_says_it_is_emulated_writes_an_emulated_document(models_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(SETTING, "qemu-user")
    document = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", mode="performance", repetitions=8,
                             warmup=1, progress=False,
                             weights=[str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")]))
    validate_document(document)
    assert document["status"] == "ok"
    assert document["machine"]["emulated"]["evidence"] == ["$REQUESTFLOW_EMULATED=qemu-user"]
    verdict = document["performance"]["quality"]
    assert verdict["verdict"] == "EMULATED" and verdict["reasons"][0].startswith("emulated (qemu-user)")
    out = tmp_path / "point.json"
    out.write_text(json.dumps(document))
    checked = subprocess.run([sys.executable, "-m", "requestflow.cli", "validate", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


class TestTheFrontier:
    """Migration 0010 (pareto_frontier v5): an emulated point never sits on a frontier, even on the board that also
    holds real measurements, even when its emulated latency beats them."""

    @pytest.fixture(scope="class")
    def documents(self, models_dir):
        from requestflow.board.runner import statistics

        weights = [str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")]

        def performance(threads: int) -> dict:
            document = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", repetitions=12, warmup=1,
                                     threads=threads, progress=False, weights=weights))
            assert document["status"] == "ok"
            return document

        real = performance(1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SETTING, "qemu-user")
            emulated = performance(2)  # another point (2 threads), the same configuration's accuracy
        # twice as fast as the real one: on the old frontier it would be the only point of the board
        p = emulated["performance"]
        p.update(statistics([s * 0.5 * real["performance"]["median"] / p["median"] for s in p["samples"]],
                            p["batch_size"]))
        p["quality"] = quality.assess(p["samples"], emulated=emulated["machine"]["emulated"])
        accuracy = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", mode="accuracy", limit=5,
                                 progress=False, weights=weights))
        for document in (real, emulated, accuracy):
            validate_document(document)
        return {"real": real, "emulated": emulated, "accuracy": accuracy}

    def test_the_emulated_point_is_on_the_scoreboard_but_not_on_the_frontier(self, documents):
        from alembic import command
        from sqlalchemy import create_engine

        from requestflow.results.database import alembic_config, sqlalchemy_url, upgrade
        from requestflow.results.identity import point_id
        from requestflow.results.load import load_documents
        from requestflow.results.query import read_only
        from tests.databases import throwaway_database

        ids = {name: point_id("mixed", documents[name]["context"]) for name in ("real", "emulated")}
        assert ids["real"] != ids["emulated"]
        with throwaway_database() as url:
            engine = create_engine(sqlalchemy_url(url))
            try:
                load_documents(engine, list(documents.items()), "mixed", sweep="manual__emulated")
                _, rows = read_only(engine, "SELECT point_id, quality, quality_reasons, top1 FROM scoreboard "
                                            "WHERE board = 'mixed' AND latency_median_s IS NOT NULL")
                by_point = {row[0]: row for row in rows}
                assert by_point[ids["emulated"]][1] == "EMULATED"
                assert by_point[ids["emulated"]][2][0].startswith("emulated (qemu-user)")
                assert by_point[ids["emulated"]][3] == by_point[ids["real"]][3] is not None  # the same top-1

                def frontier():  # the median's (pareto_frontier v7 has a frontier per latency_stat, v4 one)
                    return [row[0] for row in read_only(engine, "SELECT point_id FROM pareto_frontier f "
                                                                "WHERE board = 'mixed' AND coalesce(to_jsonb(f) ->> "
                                                                "'latency_stat', 'median') = 'median'")[1]]

                assert frontier() == [ids["real"]]
                with engine.begin() as connection:  # pareto_frontier v4: the emulated point beat the real one
                    command.downgrade(alembic_config(sqlalchemy_url(url), connection), "0009")
                assert frontier() == [ids["emulated"]]
                upgrade(sqlalchemy_url(url))
                assert frontier() == [ids["real"]]
            finally:
                engine.dispose()
