"""Clock pinning, restoring and cool-down on fake sysfs trees made of plain files under tmp_path.

No test writes this machine's /sys: every call gets a fake root, and one test records every file opened for writing
while the CLI pins and restores, and compares the real cpufreq settings before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from requestflow.board import clocks
from requestflow.errors import UserError

LITTLE_MAX, BIG_MAX, MIN = 1844000, 2362000, 533000
MALI = "e82c0000.mali"
MALI_FREQS = [178000000, 400000000, 533000000, 807000000, 960000000, 1037000000]


def fake_board(root: Path, governors=("performance", "schedutil", "userspace", "powersave"),
               gpu_governors=("mali_ondemand", "performance"), temps=(41500, 52000)) -> Path:
    """A HiKey960-like tree: cpu0-3 LITTLE (1844 MHz), cpu4-7 big (2362 MHz) under schedutil, a Mali GPU under its
    own governor, a memory-controller devfreq device, and thermal zones."""
    for cpu in range(8):
        top = BIG_MAX if cpu >= 4 else LITTLE_MAX
        write_all(root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq", {
            "cpuinfo_min_freq": MIN, "cpuinfo_max_freq": top, "scaling_min_freq": MIN, "scaling_max_freq": top,
            "scaling_cur_freq": 999000, "scaling_governor": "schedutil", "scaling_setspeed": "<unsupported>",
            "scaling_available_governors": " ".join(governors)})
    write_all(root / "sys/devices/system/cpu", {"online": "0-7"})
    write_all(root / f"sys/class/devfreq/{MALI}", {
        "governor": "mali_ondemand", "available_governors": " ".join(gpu_governors), "cur_freq": MALI_FREQS[0],
        "min_freq": MALI_FREQS[0], "max_freq": MALI_FREQS[-1], "available_frequencies": " ".join(map(str, MALI_FREQS))})
    write_all(root / "sys/class/devfreq/ddr_devfreq", {"governor": "ddr_ondemand", "min_freq": 1, "max_freq": 2})
    for index, millideg in enumerate(temps):
        write_all(root / f"sys/class/thermal/thermal_zone{index}", {"temp": millideg, "type": f"zone{index}"})
    return root


def write_all(folder: Path, values: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(f"{value}\n")


def cpu_file(root: Path, cpu: int, name: str) -> str:
    return (root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/{name}").read_text().strip()


def gpu_file(root: Path, name: str) -> str:
    return (root / f"sys/class/devfreq/{MALI}/{name}").read_text().strip()


def settings(root: Path) -> dict:
    """Every writable setting of the fake board, to compare before and after."""
    cpus = {cpu: {name: cpu_file(root, cpu, name) for name in clocks.CPU_SETTINGS} for cpu in range(8)}
    return {"cpus": cpus, "gpu": {name: gpu_file(root, name) for name in clocks.GPU_SETTINGS}}


@pytest.fixture
def board(tmp_path):
    return fake_board(tmp_path / "root")


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state" / "clocks.json"


@pytest.fixture
def kernel_checks_min_max(monkeypatch):
    """Writes behave like the kernel's: a minimum above the maximum (or the reverse) is EINVAL."""
    real_write = clocks._write

    def write(folder, name, value):
        pair = {"scaling_min_freq": "scaling_max_freq", "scaling_max_freq": "scaling_min_freq",
                "min_freq": "max_freq", "max_freq": "min_freq"}
        if name in pair:
            other = int((folder / pair[name]).read_text())
            low, high = (int(value), other) if "min" in name else (other, int(value))
            if low > high:
                raise clocks._WriteError(f"cannot write {value} to {folder / name}: Invalid argument")
        real_write(folder, name, value)

    monkeypatch.setattr(clocks, "_write", write)


class TestPin:
    def test_pins_every_cpu_and_the_gpu_with_the_performance_governor(self, board, state):
        report = clocks.pin(board, state, "sweep-1")
        assert report["pinned"] is True and report["reason"] is None
        assert report["holders"] == ["sweep-1"] and report["originals_recorded"] is True
        assert [(c["cpu"], c["method"], c["khz"]) for c in report["cpus"]] == [
            (cpu, "performance", BIG_MAX if cpu >= 4 else LITTLE_MAX) for cpu in range(8)]
        assert all(cpu_file(board, cpu, "scaling_governor") == "performance" for cpu in range(8))
        assert report["cpus"][0]["warning"] == f"running at 999000 kHz, not {LITTLE_MAX} kHz (thermal throttling?)"
        assert report["gpus"] == [{"name": MALI, "pinned": True, "method": "performance", "governor": "performance",
                                   "hz": MALI_FREQS[-1], "cur_hz": MALI_FREQS[0]}]
        assert gpu_file(board, "governor") == "performance"
        assert (board / "sys/class/devfreq/ddr_devfreq/governor").read_text() == "ddr_ondemand\n"  # not a GPU
        saved = json.loads(state.read_text())
        assert saved["cpus"]["4"] == {"scaling_governor": "schedutil", "scaling_min_freq": str(MIN),
                                      "scaling_max_freq": str(BIG_MAX)}
        assert saved["gpus"][MALI] == {"governor": "mali_ondemand", "min_freq": str(MALI_FREQS[0]),
                                       "max_freq": str(MALI_FREQS[-1])}

    def test_userspace_governor_with_setspeed_when_there_is_no_performance_governor(self, tmp_path, state):
        board = fake_board(tmp_path / "root", governors=("schedutil", "userspace"))
        report = clocks.pin(board, state)
        assert {c["method"] for c in report["cpus"]} == {"userspace"} and report["pinned"]
        assert cpu_file(board, 5, "scaling_governor") == "userspace"
        assert cpu_file(board, 5, "scaling_setspeed") == str(BIG_MAX)
        assert report["cpus"][5]["khz"] == BIG_MAX
        assert clocks.restore(board, state)["restored"] is True
        assert cpu_file(board, 5, "scaling_governor") == "schedutil"

    def test_min_equals_max_when_neither_governor_is_offered(self, tmp_path, state):
        board = fake_board(tmp_path / "root", governors=("schedutil",), gpu_governors=("mali_ondemand",))
        before = settings(board)
        report = clocks.pin(board, state)
        assert {c["method"] for c in report["cpus"]} == {"min=max"} and report["pinned"]
        assert cpu_file(board, 0, "scaling_min_freq") == cpu_file(board, 0, "scaling_max_freq") == str(LITTLE_MAX)
        assert cpu_file(board, 0, "scaling_governor") == "schedutil"
        assert report["gpus"][0]["method"] == "min=max"
        assert gpu_file(board, "min_freq") == gpu_file(board, "max_freq") == str(MALI_FREQS[-1])
        clocks.restore(board, state)
        assert settings(board) == before

    def test_min_and_max_are_written_in_an_order_the_kernel_accepts(self, tmp_path, state, kernel_checks_min_max):
        board = fake_board(tmp_path / "root", governors=("schedutil",))
        (board / "sys/devices/system/cpu/cpu4/cpufreq/scaling_max_freq").write_text("1000000\n")  # capped by hand
        with pytest.raises(clocks._WriteError, match="Invalid argument"):  # the check itself works
            clocks._write(board / "sys/devices/system/cpu/cpu4/cpufreq", "scaling_min_freq", BIG_MAX)
        before = settings(board)
        report = clocks.pin(board, state)
        assert report["cpus"][4]["pinned"] is True, report["cpus"][4]  # raised the maximum first
        report = clocks.restore(board, state)
        assert report["restored"] is True, report  # lowered the minimum first
        assert settings(board) == before

    def test_an_unwritable_setting_is_reported_not_raised_and_not_claimed(self, board, state):
        governor = board / "sys/devices/system/cpu/cpu5/cpufreq/scaling_governor"
        governor.unlink()
        governor.mkdir()  # a directory in place of the file: unwritable even for root
        report = clocks.pin(board, state)
        cpu5 = report["cpus"][5]
        assert cpu5 == {"cpu": 5, "pinned": False, "reason": f"cannot write performance to {governor}: Is a directory"}
        assert all(c["pinned"] for c in report["cpus"] if c["cpu"] != 5)
        assert report["pinned"] is False and report["reason"] == "1 of 9 clocks not pinned"

    def test_a_permission_error_on_the_gpu_is_reported(self, board, state, monkeypatch):
        real_open = os.open

        def refuse_devfreq(path, flags, *args, **kwargs):
            if "devfreq" in str(path) and flags & os.O_WRONLY:
                raise PermissionError(13, "Permission denied")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse_devfreq)
        report = clocks.pin(board, state)
        assert report["gpus"][0]["pinned"] is False and "Permission denied" in report["gpus"][0]["reason"]
        assert gpu_file(board, "governor") == "mali_ondemand"
        assert all(c["pinned"] for c in report["cpus"])

    def test_a_setting_that_does_not_hold_is_not_reported_as_pinned(self, board, state, monkeypatch):
        real_write = clocks._write

        def governor_ignored(folder, name, value):  # the write succeeds but the kernel keeps its governor
            if name != "scaling_governor":
                real_write(folder, name, value)

        monkeypatch.setattr(clocks, "_write", governor_ignored)
        report = clocks.pin(board, state)
        assert not any(c["pinned"] for c in report["cpus"])
        assert report["cpus"][0]["reason"] == (f"performance: reads back governor schedutil, min {MIN}, "
                                               f"max {LITTLE_MAX} kHz, not {LITTLE_MAX} kHz")

    def test_a_machine_without_cpufreq_pins_nothing_and_says_why(self, tmp_path, state):
        root = tmp_path / "vm"
        (root / "sys/devices/system/cpu/cpu0").mkdir(parents=True)
        report = clocks.pin(root, state)
        assert report["cpus"] == [] and report["gpus"] == [] and report["pinned"] is False
        assert report["reason"] == f"no cpufreq in {root}/sys/devices/system/cpu: clocks not pinned"
        assert clocks.restore(root, state)["reason"] is None  # the holder is released cleanly
        assert not state.exists()


class TestOriginalsAndHolders:
    def test_a_second_pin_keeps_the_first_originals(self, board, state):
        before = settings(board)
        clocks.pin(board, state, "a")
        again = clocks.pin(board, state, "a")  # also what a pin after a crash (state file left behind) does
        assert again["originals_recorded"] is False
        assert json.loads(state.read_text())["cpus"]["0"]["scaling_governor"] == "schedutil"
        assert clocks.restore(board, state, "a")["restored"] is True
        assert settings(board) == before

    def test_two_holders_the_first_restore_keeps_the_clocks_pinned(self, board, state):
        before = settings(board)
        clocks.pin(board, state, "sweep-a")
        assert clocks.pin(board, state, "sweep-b")["holders"] == ["sweep-a", "sweep-b"]
        first = clocks.restore(board, state, "sweep-a")
        assert first["restored"] is False and first["holders"] == ["sweep-b"]
        assert first["reason"] == "clocks still held by sweep-b: left pinned"
        assert cpu_file(board, 0, "scaling_governor") == "performance" and state.exists()
        assert clocks.status(board, state)["holders"] == ["sweep-b"]
        second = clocks.restore(board, state, "sweep-b")
        assert second["restored"] is True and second["holders"] == []
        assert settings(board) == before and not state.exists()

    def test_force_restores_while_another_holder_remains(self, board, state):
        before = settings(board)
        clocks.pin(board, state, "sweep-a")
        clocks.pin(board, state, "sweep-b")
        assert clocks.restore(board, state, "sweep-a", force=True)["restored"] is True
        assert settings(board) == before and not state.exists()

    def test_restore_without_a_state_file_is_nothing_to_do(self, board, state):
        for _ in range(2):
            report = clocks.restore(board, state, "sweep-a")
            assert report["restored"] is False and report["reason"] == f"no state file {state}: nothing to restore"

    def test_a_failed_restore_keeps_the_state_file_for_another_try(self, board, state):
        before = settings(board)
        clocks.pin(board, state, "a")
        governor = board / "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor"
        governor.unlink()
        governor.mkdir()
        report = clocks.restore(board, state, "a")
        assert report["restored"] is False and "state file kept" in report["reason"]
        assert report["cpus"][2]["restored"] is False and report["cpus"][1]["restored"] is True
        assert json.loads(state.read_text())["holders"] == []
        governor.rmdir()
        governor.write_text("performance\n")
        assert clocks.restore(board, state, "b")["restored"] is True
        assert settings(board) == before and not state.exists()

    @pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 1, "holders": "a"}'])
    def test_a_corrupt_state_file_is_a_user_error_naming_it(self, board, state, text):
        state.parent.mkdir(parents=True)
        state.write_text(text)
        for call in (lambda: clocks.pin(board, state), lambda: clocks.restore(board, state),
                     lambda: clocks.status(board, state)):
            with pytest.raises(UserError, match=f"corrupt clock state file {state}"):
                call()
        assert cpu_file(board, 0, "scaling_governor") == "schedutil"  # nothing pinned on a corrupt state

    def test_a_state_file_of_another_root_is_refused(self, board, state, tmp_path):
        clocks.pin(board, state)
        with pytest.raises(UserError, match=f"is for root {board}, not"):
            clocks.restore(fake_board(tmp_path / "other"), state)

    def test_status_reports_holders_originals_and_current_values(self, board, state):
        assert clocks.status(board, state)["state"] == "absent"
        clocks.pin(board, state, "sweep-a")
        report = clocks.status(board, state)
        assert report["state"] == "present" and report["holders"] == ["sweep-a"]
        assert report["originals"]["cpus"]["7"]["scaling_governor"] == "schedutil"
        assert report["current"]["cpus"][7] == {"cpu": 7, "scaling_governor": "performance",
                                                "scaling_min_freq": str(MIN), "scaling_max_freq": str(BIG_MAX),
                                                "cur_khz": 999000}
        assert report["current"]["gpus"][0]["governor"] == "performance"


class TestCoolDown:
    def test_waits_until_the_hottest_zone_is_below(self, board):
        hot = board / "sys/class/thermal/thermal_zone1/temp"
        slept = []

        def sleep(seconds):  # the board cools by 4 °C a poll
            slept.append(seconds)
            hot.write_text(str(int(hot.read_text()) - 4000))

        result = clocks.cool_down(board, below_c=45, timeout_s=60, poll_s=2, sleep=sleep)
        assert result == {"reached": True, "celsius": 44.0, "zone": "thermal_zone1", "below_c": 45, "waited_s": 4.0,
                          "reason": None}
        assert slept == [2, 2]

    def test_a_timeout_is_a_result_not_an_exception(self, board):
        slept = []
        result = clocks.cool_down(board, below_c=45, timeout_s=2.5, poll_s=1, sleep=slept.append)
        assert result["reached"] is False and result["celsius"] == 52.0 and result["waited_s"] == 2.5
        assert result["reason"] == "thermal_zone1 still at 52 °C after 2.5 s (timeout)"
        assert slept == [1, 1, 0.5]

    def test_no_readable_sensor_returns_at_once(self, tmp_path):
        def sleep(seconds):
            raise AssertionError("must not wait without a sensor")

        result = clocks.cool_down(tmp_path, below_c=45, timeout_s=60, sleep=sleep)
        assert result["reached"] is None and result["reason"] == "no thermal zone readable"

    def test_bad_arguments_are_user_errors(self, board):
        with pytest.raises(UserError, match="poll 0 s above 0"):
            clocks.cool_down(board, below_c=45, timeout_s=1, poll_s=0)
        with pytest.raises(UserError, match="must be numbers"):
            clocks.cool_down(board, below_c=float("nan"), timeout_s=1)


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "requestflow.cli", *map(str, argv)], capture_output=True, text=True)


class TestCli:
    def test_clocks_print_exactly_one_json_document(self, board, state):
        pinned = cli("clocks", "pin", "--state", state, "--root", board, "--holder", "sweep-1")
        assert pinned.returncode == 0, pinned.stderr
        assert json.loads(pinned.stdout)["pinned"] is True  # json.loads fails on anything more than one document
        status = json.loads(cli("clocks", "status", "--state", state, "--root", board).stdout)
        assert status["holders"] == ["sweep-1"]
        restored = cli("clocks", "restore", "--state", state, "--root", board, "--holder", "sweep-1")
        assert restored.returncode == 0 and json.loads(restored.stdout)["restored"] is True

    def test_platform_prints_the_snapshot(self, board):
        (board / "proc/device-tree").mkdir(parents=True)
        (board / "proc/device-tree/model").write_text("HiKey960\x00")
        result = cli("platform", "--root", board)
        assert result.returncode == 0, result.stderr
        snapshot = json.loads(result.stdout)
        assert snapshot["board"] == {"id": "hikey960", "name": "HiKey960"}
        assert [(c["name"], c["cpus"]) for c in snapshot["clusters"]] == [("big", [4, 5, 6, 7]),
                                                                          ("LITTLE", [0, 1, 2, 3])]
        assert [g["name"] for g in snapshot["gpus"]] == [MALI]

    def test_cooldown_and_a_vm_exit_0_with_their_report(self, run_cli, tmp_path):
        code, out, err = run_cli("cooldown", "--below", "45", "--root", tmp_path)
        assert code == 0 and json.loads(out)["reason"] == "no thermal zone readable"
        (tmp_path / "sys/devices/system/cpu/cpu0").mkdir(parents=True)
        code, out, err = run_cli("clocks", "pin", "--state", tmp_path / "s.json", "--root", tmp_path)
        assert code == 0 and json.loads(out)["cpus"] == []

    @pytest.mark.parametrize(("argv", "message"), [
        (["clocks", "pin"], "the following arguments are required: --state"),
        (["clocks", "unpin", "--state", "s.json"], "invalid choice: 'unpin'"),
        (["clocks", "pin", "--state", "s.json", "--force"], "--force goes with clocks restore only"),
        (["clocks", "status", "--state", "s.json", "--root", "/no/such/root"], "/no/such/root is not a folder"),
        (["cooldown", "--below", "warm"], "invalid float value: 'warm'"),
    ])
    def test_bad_input_is_one_line_and_exit_2(self, run_cli, tmp_path, monkeypatch, argv, message):
        monkeypatch.chdir(tmp_path)
        code, out, err = run_cli(*argv)
        assert code == 2 and out == "" and not (tmp_path / "s.json").exists()
        assert err.count("\n") == 1 and message in err and "Traceback" not in err

    def test_a_corrupt_state_file_through_the_cli(self, board, state):
        state.parent.mkdir(parents=True)
        state.write_text("{")
        result = cli("clocks", "restore", "--state", state, "--root", board)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == f"requestflow: error: corrupt clock state file {state}: not a requestflow clock " \
                                f"state (version 1); check the clocks by hand, then remove it\n"

    def test_the_real_sys_is_untouched(self, run_cli, board, state, monkeypatch, tmp_path):
        real = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_*"))
        before = {path: path.read_text() for path in real if os.access(path, os.R_OK)}
        opened = []
        real_open = os.open

        def recording_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR):
                opened.append(Path(path).resolve())
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", recording_open)
        for action in ("pin", "status", "restore"):
            code, out, err = run_cli("clocks", action, "--state", state, "--root", board)
            assert code == 0, err
        assert opened and all(path.is_relative_to(tmp_path) for path in opened), opened
        assert any("cpufreq" in str(path) for path in opened)  # the recording did see the fake sysfs writes
        assert {path: path.read_text() for path in before} == before
