"""Reading the board from a fake sysfs/procfs tree (never this machine's real governors)."""

from __future__ import annotations

from requestflow.board.machine import machine_info, snapshot_frequencies_and_temperatures


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


def test_reads_board_cpus_clusters_memory_and_temperatures(tmp_path):
    fake_hikey960(tmp_path)
    info = machine_info(tmp_path, with_opencl=False)
    assert info["board_model"] == "HiKey960"
    assert info["cpu_model"] == "ARM CPU parts 0xd03 0xd09"
    assert info["clusters"] == [{"max_khz": 2362000, "cpus": [4, 5, 6, 7]},
                                {"max_khz": 1844000, "cpus": [0, 1, 2, 3]}]
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
