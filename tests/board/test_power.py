"""Measured energy (requestflow.board.power) on fake meters whose files a writer thread changes over time with a known
power profile: 2 W idle, 5 W while inferring. The measured joules per inference must match the profile within 2%;
a meter that fails mid-run makes the energy invalid with its reason, and the latency result stands."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from requestflow.board import power
from requestflow.board.machine import platform_snapshot
from requestflow.board.power import Sampler, energy_summary, parse_meter
from requestflow.board.power_meters import CommandMeter, HwmonMeter, RaplMeter, detect
from requestflow.errors import UserError
from tests.fake_power import Profile, ina231_rails, ina3221, rapl, write

IDLE_W, ACTIVE_W = 2.0, 5.0
RUNS = 100  # inferences said to have run in the active phase


def run_phases(meter, profile: Profile | None, idle_s: float = 1.0, active_s: float = 1.0, during=None,
               rate_hz: float = 200.0) -> tuple[dict, float]:
    """Idle baseline, then the 'timed region' at 5 W (``during(sampler)`` called halfway): the energy summary and
    the active phase's duration."""
    sampler = Sampler(meter, rate_hz)
    sampler.start()
    sampler.mark("idle_start")
    time.sleep(idle_s)
    sampler.mark("idle_end")
    if profile is not None:
        profile.set(ACTIVE_W)
    sampler.mark("active_start")
    time.sleep(active_s / 2)
    if during is not None:
        during()
    time.sleep(active_s / 2)
    sampler.mark("active_end")
    if profile is not None:
        profile.set(IDLE_W)
    sampler.stop()
    return energy_summary(sampler, RUNS), sampler.marks["active_end"] - sampler.marks["active_start"]


@pytest.fixture
def profile(request, tmp_path):
    writer = Profile(tmp_path, request.param, IDLE_W)
    writer.start()
    yield writer
    writer.stop()


def assert_matches_profile(energy: dict, active_s: float) -> None:
    assert energy["valid"], energy["reason"]
    expected = ACTIVE_W * active_s / RUNS
    assert energy["joules_per_inference"] == pytest.approx(expected, rel=0.02)
    # above idle is a difference of two measurements: held to 2% of the total, as the total is
    assert energy["joules_per_inference_above_idle"] == pytest.approx((ACTIVE_W - IDLE_W) * active_s / RUNS,
                                                                      abs=0.02 * expected)
    assert energy["idle_w"] == pytest.approx(IDLE_W, rel=0.02)
    assert energy["active_w"] == pytest.approx(ACTIVE_W, rel=0.02)
    if energy["meter"]["kind"] == "rapl":  # differences of a counter the fake writer advances when it gets the CPU
        assert ACTIVE_W * 0.95 <= energy["active_p90_w"] <= ACTIVE_W * 1.5
    else:
        assert ACTIVE_W <= energy["active_p90_w"] <= ACTIVE_W + 0.5  # the ripple's upper part
    assert energy["samples"] >= 100 and energy["rate_hz"] > 100
    assert len(energy["trace"]["w"]) <= power.TRACE_POINTS and 0 < energy["trace"]["of"] <= energy["samples"]


class TestTheMeasuredJoulesMatchTheProfile:
    @pytest.mark.parametrize("profile", ["ina3221"], indirect=True)
    def test_an_ina3221_read_through_its_board_input_channel_current_times_voltage(self, profile, tmp_path):
        meter = parse_meter(f"hwmon:{tmp_path}")
        assert [c["label"] for c in meter.identity()["channels"]] == ["ina3221 VDD_IN"]  # not the sum of rails
        assert_matches_profile(*run_phases(meter, profile))

    @pytest.mark.parametrize("profile", ["ina231"], indirect=True)
    def test_ina231_rails_without_a_board_total_are_summed(self, profile, tmp_path):
        meter = parse_meter(f"hwmon:{tmp_path}")
        assert len(meter.identity()["channels"]) == 4
        assert_matches_profile(*run_phases(meter, profile))

    def test_a_rapl_counter_that_wraps_during_the_timed_region(self, tmp_path):
        # a 10 J range; 2 J idle from 6.5 J, then 5 J at 5 W: the counter passes 10 J 0.3 s into the timed region
        writer = Profile(tmp_path, "rapl", IDLE_W, max_range_uj=10_000_000, start_uj=6_500_000)
        writer.start()
        try:
            meter = parse_meter(f"rapl:{tmp_path}")
            energy, active_s = run_phases(meter, writer)
            assert writer.energy_uj < 6_500_000  # it did wrap
        finally:
            writer.stop()
        assert meter.identity()["zones"] == ["intel-rapl:0 (package-0)"]  # not its core sub-zone too
        assert_matches_profile(energy, active_s)

    def test_a_sysfs_mount_itself_is_a_root_too(self, tmp_path):
        ina3221(tmp_path)
        assert parse_meter(f"hwmon:{tmp_path / 'sys'}").read() == pytest.approx(0.5)  # 100 mA x 5 V

    def test_an_external_command_printing_timestamped_watts(self, tmp_path):
        script = tmp_path / "meter.py"
        script.write_text(textwrap.dedent("""\
            import sys, time
            switch, end = float(sys.argv[1]), float(sys.argv[2])
            while time.time() < end:
                now = time.time()
                print(f"{now:.6f} {5.0 if now >= switch else 2.0}", flush=True)
                time.sleep(0.002)
            """))
        switch = time.time() + 1.0
        meter = CommandMeter(f"{sys.executable} {script} {switch} {switch + 2}")
        try:
            sampler = Sampler(meter)
            sampler.start()
            offset = time.time() - time.monotonic()
            at = {"idle_start": switch - 0.5, "idle_end": switch - 0.05, "active_start": switch + 0.005,
                  "active_end": switch + 0.4}
            for name, epoch in at.items():
                time.sleep(max(0.0, epoch - offset - time.monotonic()))
                sampler.mark(name)
            sampler.stop()
        finally:
            meter.close()
        energy = energy_summary(sampler, RUNS)
        active_s = sampler.marks["active_end"] - sampler.marks["active_start"]
        assert energy["valid"], energy["reason"]
        assert energy["meter"] == {"kind": "command", "command": meter.command}
        assert energy["joules_per_inference"] == pytest.approx(ACTIVE_W * active_s / RUNS, rel=0.02)
        assert energy["idle_w"] == pytest.approx(IDLE_W, rel=0.02)


class TestAFailingMeterInvalidatesTheEnergyOnly:
    @pytest.mark.parametrize("profile", ["ina3221"], indirect=True)
    def test_a_meter_that_disappears_mid_run(self, profile, tmp_path):
        meter = parse_meter(f"hwmon:{tmp_path}")

        def unplug():
            with profile.lock:
                profile.paused = True
            shutil.rmtree(tmp_path / "sys/class/hwmon/hwmon0")

        energy, _ = run_phases(meter, profile, during=unplug)
        assert not energy["valid"] and energy["joules_per_inference"] is None
        assert "cannot read" in energy["reason"] and "No such file" in energy["reason"]

    @pytest.mark.parametrize("profile", ["ina3221"], indirect=True)
    def test_an_unreadable_file(self, profile, tmp_path):
        meter = parse_meter(f"hwmon:{tmp_path}")
        current = tmp_path / "sys/class/hwmon/hwmon0/curr1_input"

        def break_it():
            with profile.lock:
                profile.paused = True
            current.unlink()
            current.mkdir()  # read() fails as on a sensor that returns EIO (root reads any mode)

        energy, _ = run_phases(meter, profile, during=break_it)
        assert not energy["valid"] and f"cannot read {current}" in energy["reason"]

    def test_a_counter_that_goes_backwards(self, tmp_path):
        writer = Profile(tmp_path, "rapl", IDLE_W, max_range_uj=10_000_000, start_uj=5_000_000)
        writer.start()
        try:
            meter = parse_meter(f"rapl:{tmp_path}")

            def reset():
                with writer.lock:
                    writer.paused = True
                write(writer.folder / "energy_uj", int(writer.energy_uj) - 1_000_000)  # 1 J back: no wrap

            energy, _ = run_phases(meter, writer, during=reset)
        finally:
            writer.stop()
        assert not energy["valid"] and "went backwards" in energy["reason"]

    def test_a_command_that_prints_nonsense_or_dies(self, tmp_path):
        for command, reason in ((f"{sys.executable} -c \"print('watts: lots', flush=True)\"", "not 'TIMESTAMP WATTS'"),
                                (f"{sys.executable} -c \"print(3.0, flush=True)\"", "the meter command ended")):
            meter = CommandMeter(command)
            try:
                energy, _ = run_phases(meter, None, idle_s=0.2, active_s=0.2)
            finally:
                meter.close()
            assert not energy["valid"] and reason in energy["reason"]

    def test_a_timed_region_too_short_for_the_meter_says_so(self, tmp_path):
        ina3221(tmp_path / "ina")
        energy, _ = run_phases(parse_meter(f"hwmon:{tmp_path / 'ina'}"), None, idle_s=0.2, active_s=0.002)
        assert not energy["valid"] and "too few meter readings" in energy["reason"]
        rapl(tmp_path / "rapl")
        energy, _ = run_phases(parse_meter(f"rapl:{tmp_path / 'rapl'}"), None, idle_s=0.2, active_s=0.05)
        assert not energy["valid"] and "too short for a counter" in energy["reason"]


class TestMetersAreChosenAndDetected:
    def test_detection_for_the_platform_snapshot(self, tmp_path):
        ina3221(tmp_path / "jetson")
        rapl(tmp_path / "vm")
        (tmp_path / "plain/sys").mkdir(parents=True)
        jetson = platform_snapshot(tmp_path / "jetson", with_opencl=False)["power_meters"]
        assert [m["kind"] for m in jetson] == ["hwmon"] and jetson[0]["spec"] == f"hwmon:{tmp_path / 'jetson'}"
        assert "VDD_IN" in jetson[0]["description"]
        assert [m["spec"] for m in detect(tmp_path / "vm")] == [f"rapl:{tmp_path / 'vm'}"]
        assert detect(tmp_path / "plain") == []
        assert isinstance(parse_meter(f"auto:{tmp_path / 'vm'}"), RaplMeter)
        assert parse_meter(f"auto:{tmp_path / 'plain'}") is None
        assert isinstance(parse_meter(f"auto:{tmp_path / 'jetson'}"), HwmonMeter)

    def test_bad_specs_and_absent_meters_are_refused_by_name(self, tmp_path):
        (tmp_path / "sys").mkdir()
        for spec, message in (("watts", "expected hwmon"), (f"hwmon:{tmp_path}", "no power or current/voltage sensor"),
                              (f"rapl:{tmp_path}", "no RAPL zone"), ("hwmon:/no/such/folder", "is not a folder"),
                              ("command:", "needs a command"), ("command:/no/such/meter", "cannot start it")):
            with pytest.raises(UserError, match=message):
                parse_meter(spec)
        assert parse_meter("none") is None and parse_meter(None) is None

    def test_a_connection_extras_spec_is_checked_for_its_form_only(self):
        assert power.check_spec("hwmon", "/srv/fake") == "hwmon:/srv/fake"
        assert power.check_spec("rapl") == "rapl" and power.check_spec("auto", "/") == "auto"
        assert power.check_spec("rapl:/x", "/srv/fake") == "rapl:/x"
        assert power.check_spec("command:meter --port /dev/ttyUSB0") == "command:meter --port /dev/ttyUSB0"
        for bad in ("", "watts", "none:x", "command:", "hwmon:relative/root", 3):
            with pytest.raises(UserError, match="power_meter"):
                power.check_spec(bad)

    def test_the_command_line_says_when_there_is_no_meter_and_how_to_add_one(self, tmp_path, capsys):
        from requestflow.cli import main

        (tmp_path / "sys").mkdir()
        assert main(["power-meters", "--root", str(tmp_path)]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("no power meter found") and "--power-meter command:CMD" in line
        assert "\n" not in line
        ina231_rails(tmp_path)
        assert main(["power-meters", "--root", str(tmp_path), "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["kind"] == "hwmon"


def test_the_trace_is_bounded_and_keeps_the_mean(tmp_path):
    times = np.linspace(0, 10, 5000)
    watts = 2 + np.sin(times)
    trace = power.bounded_trace(times, watts)
    assert len(trace["t_s"]) == len(trace["w"]) == power.TRACE_POINTS and trace["of"] == 5000
    assert np.mean(trace["w"]) == pytest.approx(np.mean(watts), rel=1e-3)
    assert Path(power.__file__).name == "power.py"
