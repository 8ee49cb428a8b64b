"""Reading the board from a fake sysfs/procfs tree (never this machine's real governors): CPUs and clusters, GPU
devfreq devices, known boards, compilers, OpenCL (pyopencl or clinfo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from requestflow.board.machine import (
    cluster_cpus,
    clusters,
    compilers,
    format_cpus,
    gpu_devfreq,
    known_board,
    machine_info,
    platform_snapshot,
    snapshot_frequencies_and_temperatures,
)
from requestflow.board.opencl_probe import opencl
from requestflow.errors import UserError

MALI_G71 = {"governor": "mali_ondemand", "available_governors": "mali_ondemand performance powersave",
            "cur_freq": "178000000", "min_freq": "178000000", "max_freq": "1037000000",
            "available_frequencies": "178000000 400000000 533000000 807000000 960000000 1037000000"}


def fake_hikey960(root):
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("HiKey960\x00")
    (root / "proc/cpuinfo").write_text("processor\t: 0\nCPU part\t: 0xd03\n\nprocessor\t: 4\nCPU part\t: 0xd09\n")
    (root / "proc/meminfo").write_text("MemTotal:        3930000 kB\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n')
    for cpu in range(8):
        freq = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        freq.mkdir(parents=True)
        big = cpu >= 4
        (freq / "cpuinfo_max_freq").write_text("2362000\n" if big else "1844000\n")
        (freq / "cpuinfo_min_freq").write_text("533000\n")
        (freq / "scaling_cur_freq").write_text("2362000\n" if big else "999000\n")
        (freq / "scaling_governor").write_text("performance\n" if big else "schedutil\n")
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("41500\n")
    (zone / "type").write_text("soc_thermal\n")
    mali = root / "sys/class/devfreq/e82c0000.mali"
    mali.mkdir(parents=True)
    for name, value in MALI_G71.items():
        (mali / name).write_text(value + "\n")
    ddr = root / "sys/class/devfreq/ddr_devfreq"  # a memory controller, not a GPU
    ddr.mkdir()
    (ddr / "governor").write_text("ddr_ondemand\n")


def test_reads_board_cpus_clusters_memory_and_temperatures(tmp_path):
    fake_hikey960(tmp_path)
    info = machine_info(tmp_path, with_opencl=False)
    assert info["board_model"] == "HiKey960"
    assert info["cpu_model"] == "ARM CPU parts 0xd03 0xd09"
    assert info["clusters"] == [{"name": "big", "max_khz": 2362000, "cpus": [4, 5, 6, 7]},
                                {"name": "LITTLE", "max_khz": 1844000, "cpus": [0, 1, 2, 3]}]
    assert info["cpus"][0]["governor"] == "schedutil" and info["cpus"][4]["cur_khz"] == 2362000
    assert info["memory_bytes"] == 3930000 * 1024
    assert info["os"] == "Debian GNU/Linux 13 (trixie)"
    assert info["temperatures"] == [{"zone": "thermal_zone0", "type": "soc_thermal", "celsius": 41.5}]


def test_what_cannot_be_read_is_left_empty_not_guessed(tmp_path):
    info = machine_info(tmp_path, with_opencl=False)
    assert info["board_model"] is None and info["cpu_model"] is None
    assert info["cpus"] == [] and info["temperatures"] == [] and info["memory_bytes"] is None


def test_snapshot_has_json_keys(tmp_path):
    fake_hikey960(tmp_path)
    snapshot = snapshot_frequencies_and_temperatures(tmp_path)
    assert snapshot["cur_khz"]["4"] == 2362000 and snapshot["temperatures"]["thermal_zone0"] == 41.5


def test_opencl_is_reported_either_way():
    info = machine_info()["opencl"]
    assert isinstance(info["available"], bool)
    assert info["available"] or info["reason"]


_REPORT = "import json; from requestflow.board.opencl_probe import opencl; print(json.dumps(opencl()))"


def _opencl_report(*prelude: str) -> dict:
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", "; ".join([*prelude, _REPORT])],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_opencl_after_tensorflow_is_read_by_a_fresh_process():
    """PoCL segfaulted starting its devices in a process that had loaded TensorFlow (the reverse test order found
    it: a runner on a TF-slim checkpoint, or any caller that imported TensorFlow first): the same report, no crash."""
    plain = _opencl_report()
    assert plain["available"] and plain["platforms"][0]["devices"], plain  # PoCL, which these tests install
    assert _opencl_report("import tensorflow") == plain


def test_a_failed_opencl_probe_process_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    monkeypatch.setattr(sys, "executable", "/bin/false")
    assert opencl() == {"available": False, "source": "pyopencl",
                        "reason": "the OpenCL probe process ended with exit code 1"}


def test_a_probe_process_without_a_report_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    monkeypatch.setattr(sys, "executable", "/bin/echo")  # exits 0, prints its arguments: no JSON
    report = opencl()
    assert report["available"] is False and report["source"] == "pyopencl", report
    assert report["reason"].startswith("the OpenCL probe process printed no report (its last line: \"-c import json"), \
        report


@pytest.mark.parametrize(("model", "cpuinfo", "board_id", "name"), [
    ("HiKey960", None, "hikey960", "HiKey960"),
    ("Firefly-RK3399 Board", None, "firefly-rk3399", "Firefly RK3399"),
    ("Rockchip RK3399 Firefly Board (Linux Opensource)", None, "firefly-rk3399", "Firefly RK3399"),
    ("Rockchip RK3399 Evaluation Board v3 (Android)", None, "rk3399", "RK3399 board"),
    ("NVIDIA Jetson TX1 Developer Kit", None, "jetson-tx1", "Jetson TX1"),
    ("NVIDIA Jetson TX2 Developer Kit", None, "jetson-tx2", "Jetson TX2"),
    ("quill", None, "jetson-tx2", "Jetson TX2"),
    ("NVIDIA Jetson Nano Developer Kit", None, "jetson-nano", "Jetson Nano"),
    ("Jetson-AGX", None, "jetson-agx-xavier", "Jetson AGX Xavier"),
    ("NVIDIA Jetson AGX Xavier Developer Kit", None, "jetson-agx-xavier", "Jetson AGX Xavier"),
    ("NVIDIA Jetson Xavier NX Developer Kit", None, "jetson-xavier-nx", "Jetson Xavier NX"),
    ("NVIDIA Jetson AGX Orin Developer Kit", None, "jetson-agx-orin", "Jetson AGX Orin"),
    ("NVIDIA Jetson Orin Nano Developer Kit", None, "jetson-orin-nano", "Jetson Orin Nano"),
    ("Raspberry Pi 4 Model B Rev 1.4", None, "raspberry-pi-4", "Raspberry Pi 4"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", None, "raspberry-pi-3", "Raspberry Pi 3"),
    ("Raspberry Pi 5 Model B Rev 1.0", None, "raspberry-pi-5", "Raspberry Pi 5"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", None, "raspberry-pi-cm4", "Raspberry Pi Compute Module 4"),
    ("Raspberry Pi Zero 2 W Rev 1.0", None, "raspberry-pi-zero-2", "Raspberry Pi Zero 2"),
    # No device-tree model: the Raspberry Pi vendor kernel's /proc/cpuinfo names the board
    (None, "processor\t: 0\nHardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n",
     "raspberry-pi-4", "Raspberry Pi 4"),
    ("Standard PC (Q35 + ICH9, 2009)", "model name\t: AMD EPYC 7B13\n", "generic", "Standard PC (Q35 + ICH9, 2009)"),
    ("Pine64 RockPro64 v2.1", None, "generic", "Pine64 RockPro64 v2.1"),  # an RK3399 board, but it does not say so
    (None, None, "generic", None),
])
def test_known_board_from_real_model_strings(model, cpuinfo, board_id, name):
    assert known_board(model, cpuinfo) == {"id": board_id, "name": name}


def test_cluster_cpus_of_a_big_little_board(tmp_path):
    fake_hikey960(tmp_path)
    info = machine_info(tmp_path, with_opencl=False)
    assert cluster_cpus(info, "big") == [4, 5, 6, 7]
    assert cluster_cpus(info, "LITTLE") == [0, 1, 2, 3]
    assert cluster_cpus(tmp_path, "little") == [0, 1, 2, 3]  # from the root folder, any case
    assert cluster_cpus(info, "all") == list(range(8))


def test_a_single_cluster_is_all_and_has_no_little_cluster(tmp_path):
    for cpu in range(2):
        (tmp_path / f"sys/devices/system/cpu/cpu{cpu}").mkdir(parents=True)  # a VM: no cpufreq
    info = machine_info(tmp_path, with_opencl=False)
    assert info["clusters"] == [{"name": "all", "max_khz": None, "cpus": [0, 1]}]
    assert cluster_cpus(info, "all") == [0, 1]
    with pytest.raises(UserError, match=r"this board has no LITTLE cluster; it has all \(CPUs 0-1\)"):
        cluster_cpus(info, "LITTLE")
    with pytest.raises(UserError, match=r"unknown cluster 'middle': expected one of all, big, LITTLE"):
        cluster_cpus(info, "middle")
    with pytest.raises(UserError, match="no CPUs listed"):
        cluster_cpus(tmp_path / "empty", "all")


def test_three_frequency_groups_are_not_called_big_and_little():
    cpu_list = [{"cpu": c, "max_khz": khz} for c, khz in enumerate([1800000] * 4 + [2400000] * 3 + [3000000])]
    assert [(g["name"], g["cpus"]) for g in clusters(cpu_list)] == [
        ("cluster0", [7]), ("cluster1", [4, 5, 6]), ("cluster2", [0, 1, 2, 3])]
    with pytest.raises(UserError, match=r"no big cluster; it has cluster0 \(CPUs 7, 3000 MHz\), cluster1"):
        cluster_cpus({"clusters": clusters(cpu_list)}, "big")
    assert format_cpus([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"


def test_gpu_devfreq_devices_are_read_and_other_devfreq_devices_left_out(tmp_path):
    fake_hikey960(tmp_path)
    compatible_only = tmp_path / "sys/class/devfreq/fb000000.graphics"
    (compatible_only / "device/of_node").mkdir(parents=True)
    (compatible_only / "device/of_node/compatible").write_text("rockchip,rk3588-mali\x00arm,mali-bifrost\x00")
    gpus = gpu_devfreq(tmp_path)
    assert [g["name"] for g in gpus] == ["e82c0000.mali", "fb000000.graphics"]
    assert gpus[0] == {"name": "e82c0000.mali", "governor": "mali_ondemand",
                       "available_governors": ["mali_ondemand", "performance", "powersave"],
                       "cur_hz": 178000000, "min_hz": 178000000, "max_hz": 1037000000,
                       "available_hz": [178000000, 400000000, 533000000, 807000000, 960000000, 1037000000]}
    assert gpus[1]["governor"] is None and gpus[1]["available_hz"] is None  # unreadable: null, not guessed


def _executable(folder, name, script):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_compilers_report_the_first_version_line_or_null(tmp_path):
    bin_dir = tmp_path / "bin"
    _executable(bin_dir, "gcc", 'echo "gcc (Debian 14.2.0-19) 14.2.0"; echo "Copyright (C) 2024"')
    _executable(bin_dir, "cc", "exit 3")
    _executable(bin_dir, "ccache", 'echo "ccache version 4.11.2"')
    found = compilers(path=str(bin_dir))
    assert found == {"gcc": {"path": str(bin_dir / "gcc"), "version": "gcc (Debian 14.2.0-19) 14.2.0"},
                     "g++": None, "clang": None, "cc": {"path": str(bin_dir / "cc"), "version": None},
                     "ccache": {"path": str(bin_dir / "ccache"), "version": "ccache version 4.11.2"}}


CLINFO_JSON = {
    "platforms": [{"CL_PLATFORM_NAME": "ARM Platform", "CL_PLATFORM_VENDOR": "ARM",
                   "CL_PLATFORM_VERSION": "OpenCL 2.1 v1.r26p0-01rel0"}],
    "devices": [{"online": [{"CL_DEVICE_NAME": "Mali-G71", "CL_DEVICE_TYPE": {"raw": 4, "type": ["GPU"]},
                             "CL_DEVICE_VERSION": "OpenCL 2.1 v1.r26p0-01rel0", "CL_DRIVER_VERSION": "2.1",
                             "CL_DEVICE_MAX_COMPUTE_UNITS": 8, "CL_DEVICE_MAX_CLOCK_FREQUENCY": 1037,
                             "CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT": True}]}],
}


@pytest.fixture
def fakes_in_this_process(monkeypatch):
    """For tests of ``opencl()`` with fakes (never the real driver): an earlier test module's TensorFlow import
    would send it to a fresh interpreter, where the fakes are not."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)


@pytest.fixture
def without_pyopencl(monkeypatch, fakes_in_this_process):
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # `import pyopencl` now raises ImportError


def test_opencl_without_pyopencl_uses_clinfo_json(tmp_path, monkeypatch, without_pyopencl):
    (tmp_path / "clinfo.json").write_text(json.dumps(CLINFO_JSON))
    _executable(tmp_path / "bin", "clinfo", f'[ "$1" = --json ] && cat {tmp_path / "clinfo.json"}')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert opencl() == {"available": True, "source": "clinfo --json", "platforms": [
        {"name": "ARM Platform", "vendor": "ARM", "version": "OpenCL 2.1 v1.r26p0-01rel0", "devices": [
            {"name": "Mali-G71", "type": "GPU", "version": "OpenCL 2.1 v1.r26p0-01rel0", "driver_version": "2.1",
             "compute_units": 8, "max_clock_mhz": 1037, "non_uniform_work_group_support": True}]}]}


def test_opencl_falls_back_to_clinfo_list_when_json_is_not_understood(tmp_path, monkeypatch, without_pyopencl):
    (tmp_path / "list.txt").write_text(
        "Platform #0: ARM Platform\n +-- Device #0: Mali-T860\n `-- Device #1: Mali-T860 (2)\n")
    _executable(tmp_path / "bin", "clinfo", f'[ "$1" = -l ] && cat {tmp_path / "list.txt"} || echo "bad option $1"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    info = opencl()
    assert info["source"] == "clinfo -l"
    assert [(p["name"], [d["name"] for d in p["devices"]]) for p in info["platforms"]] == [
        ("ARM Platform", ["Mali-T860", "Mali-T860 (2)"])]
    assert info["platforms"][0]["devices"][0]["non_uniform_work_group_support"] is None


def test_opencl_without_pyopencl_or_clinfo(tmp_path, monkeypatch, without_pyopencl):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert opencl() == {"available": False, "source": None, "reason": "neither pyopencl nor clinfo installed"}


def test_opencl_through_pyopencl_reports_non_uniform_work_groups_where_the_device_answers(monkeypatch,
                                                                                       fakes_in_this_process):
    class Device:
        def __init__(self, name, non_uniform):
            self.name, self._non_uniform = name, non_uniform
            self.type, self.version, self.driver_version = 4, "OpenCL x", "1"
            self.max_compute_units, self.max_clock_frequency = 2, 800

        @property
        def non_uniform_work_group_support(self):
            if self._non_uniform is None:
                raise RuntimeError("clGetDeviceInfo failed: INVALID_VALUE")  # an OpenCL 1.2 device
            return self._non_uniform

    platform = types.SimpleNamespace(name="P", vendor="V", version="OpenCL 3.0",
                                     get_devices=lambda: [Device("new", 1), Device("old", None)])
    fake = types.SimpleNamespace(get_platforms=lambda: [platform],
                                 device_type=types.SimpleNamespace(to_string=lambda t: "GPU"))
    monkeypatch.setitem(sys.modules, "pyopencl", fake)
    devices = opencl()["platforms"][0]["devices"]
    assert [(d["name"], d["non_uniform_work_group_support"]) for d in devices] == [("new", True), ("old", None)]


def test_platform_snapshot_is_json_with_stable_keys(tmp_path):
    fake_hikey960(tmp_path)
    snapshot = platform_snapshot(tmp_path, with_opencl=False)
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert {"board", "gpus", "compilers", "clusters", "cpus", "temperatures", "board_model"} <= set(snapshot)
    assert snapshot["board"] == {"id": "hikey960", "name": "HiKey960"}
    assert [g["name"] for g in snapshot["gpus"]] == ["e82c0000.mali"]
    assert set(snapshot["compilers"]) == {"gcc", "g++", "clang", "cc", "ccache"}
    assert set(platform_snapshot(tmp_path / "nothing", with_opencl=False)) == set(snapshot)
