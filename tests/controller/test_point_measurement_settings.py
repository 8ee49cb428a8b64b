"""What a sweep's point passes the runner about how to measure (issue #19): the board's power meter, from its
Connection's allowlisted extras ``power_meter`` / ``power_rate_hz``, for performance points; the sweep's latency
profile (``quick`` / ``valid``), from the trigger form or ``requestflow sweep --profile``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from operators.board_settings import BoardSettings
from operators.point_steps import runner_command
from operators.sweep import defaults, form, plan
from requestflow.board.latency_stats import PROFILES
from requestflow.cli import build_parser
from requestflow.errors import UserError
from tests.controller.test_board_settings import HOST_KEY, FakeConnection

MODEL = "mobilenet-v1-0.25-128"
PERF = {"model": MODEL, "backend": "tflite", "mode": "performance", "repetitions": 3, "warmup": 1}
ACC = {"model": MODEL, "backend": "tflite", "mode": "accuracy", "limit": 5}


def settings(**extras) -> BoardSettings:
    return BoardSettings.from_connection("hikey960", FakeConnection(extra_dejson={"key_file": "/k",
                                                                                  "host_key": HOST_KEY, **extras}))


class TestThePowerMeterExtra:
    def test_a_board_without_one_measures_no_power(self):
        assert (settings().power_meter, settings().power_rate_hz) == (None, None)

    @pytest.mark.parametrize("extras, expected", [
        ({"power_meter": "hwmon"}, "hwmon"),
        ({"power_meter": "hwmon", "sysfs_root": "/srv/fake"}, "hwmon:/srv/fake"),  # read below the board's sysfs
        ({"power_meter": "rapl:/other", "sysfs_root": "/srv/fake"}, "rapl:/other"),
        ({"power_meter": "command:/opt/um25c --port /dev/ttyUSB0"}, "command:/opt/um25c --port /dev/ttyUSB0"),
        ({"power_meter": "none"}, "none"),
    ])
    def test_the_meter_is_checked_and_given_the_boards_sysfs_root(self, extras, expected):
        assert settings(**extras).power_meter == expected

    def test_the_rate_is_a_positive_number(self):
        assert settings(power_meter="hwmon", power_rate_hz="100").power_rate_hz == 100.0
        with pytest.raises(UserError, match="'power_rate_hz' must be positive"):
            settings(power_meter="hwmon", power_rate_hz="0")

    @pytest.mark.parametrize("spec", ["wattmeter", "hwmon:relative/path", "command:", "none:x"])
    def test_a_bad_meter_is_one_error_naming_the_board(self, spec):
        with pytest.raises(UserError, match=r"board connection 'hikey960': power_meter"):
            settings(power_meter=spec)


class TestTheRunnersCommandLine:
    def test_a_performance_point_gets_the_boards_meter_and_rate(self):
        args = shlex.split(runner_command("python3", PERF, power_meter="command:/opt/meter -q", power_rate_hz=50.0))
        assert args[args.index("--power-meter") + 1] == "command:/opt/meter -q"
        assert args[args.index("--power-rate-hz") + 1] == "50"

    def test_accuracy_points_identification_and_none_get_no_meter(self):
        assert "--power-meter" not in runner_command("python3", ACC, power_meter="hwmon")
        assert "--power-meter" not in runner_command("python3", PERF, out=None, power_meter="hwmon")  # --identify
        assert "--power-meter" not in runner_command("python3", PERF, power_meter="none")
        assert "--power-meter" not in runner_command("python3", PERF)

    def test_the_command_line_runs_and_the_document_has_the_boards_energy(self, tmp_path):
        """The board's extras, as the run-point path passes them, run for real: a fake INA226 at a constant 4.2 W,
        read at the board's rate below its sysfs root."""
        chip = tmp_path / "sysfs/sys/class/hwmon/hwmon0"
        chip.mkdir(parents=True)
        for name, value in (("name", "ina226"), ("power1_input", 4_200_000)):
            (chip / name).write_text(f"{value}\n")
        board = settings(power_meter="hwmon", sysfs_root=str(tmp_path / "sysfs"), power_rate_hz="100")
        point = {**PERF, "weights": "random", "repetitions": 5}
        command = runner_command(sys.executable, point, out=str(tmp_path / "result.json"),
                                 power_meter=board.power_meter, power_rate_hz=board.power_rate_hz)
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        energy = json.loads((tmp_path / "result.json").read_text())["energy"]
        assert energy["meter"]["kind"] == "hwmon" and energy["meter"]["root"] == str(tmp_path / "sysfs")
        assert energy["requested_rate_hz"] == 100.0 and set(energy["trace"]["w"]) == {4.2}  # 5 runs: too short a
        assert not energy["valid"] and "too few meter readings" in energy["reason"]  # region for a valid figure


class TestTheProfile:
    def test_the_form_offers_quick_and_valid_quick_by_default(self):
        field = form(None, [], ["local"])["profile"]
        assert field["default"] == "quick" and field["enum"] == list(PROFILES) == ["quick", "valid"]

    def test_quick_runs_the_forms_values_as_given(self):
        points = plan("local", defaults(None, [], ["local"]) | {"models": [MODEL], "repetitions": 5, "warmup": 1})
        perf = next(p for p in points if p["mode"] == "performance")
        acc = next(p for p in points if p["mode"] == "accuracy")
        assert (perf["profile"], perf["repetitions"], perf["warmup"]) == ("quick", 5, 1) and "profile" not in acc
        args = shlex.split(runner_command("python3", perf))
        assert args[args.index("--profile") + 1] == "quick" and "--profile" not in runner_command("python3", acc)

    def test_valid_raises_the_repetitions_to_its_minimum_and_keeps_more(self):
        p = defaults(None, [], ["local"]) | {"models": [MODEL], "modes": ["performance"], "profile": "valid"}
        (point,) = plan("local", p)
        assert (point["profile"], point["repetitions"], point["warmup"]) == ("valid", 64, 3)
        (point,) = plan("local", p | {"repetitions": 200, "warmup": 10})
        assert (point["repetitions"], point["warmup"]) == (200, 10)
        assert "--profile valid" in runner_command("python3", point)

    def test_an_unknown_profile_is_refused_by_the_plan(self):
        with pytest.raises(ValueError, match="unknown profile 'slow'"):
            plan("local", defaults(None, [], ["local"]) | {"models": [MODEL], "profile": "slow"})

    def test_requestflow_sweep_takes_the_profile(self):
        parser = build_parser()
        assert parser.parse_args(["sweep", "--models", MODEL, "--profile", "valid"]).profile == "valid"
        assert parser.parse_args(["sweep", "--models", MODEL]).profile is None  # the DAG's default
        with pytest.raises(UserError, match="--profile: invalid choice: 'slow'"):
            parser.parse_args(["sweep", "--models", MODEL, "--profile", "slow"])

    def test_the_runner_records_the_profile_it_was_given(self, tmp_path):
        point = {**PERF, "weights": "random", "repetitions": 20, "warmup": 3, "profile": "quick"}
        command = runner_command(sys.executable, point, out=str(tmp_path / "result.json"))
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        document = json.loads((tmp_path / "result.json").read_text())
        assert document["performance"]["profile"]["name"] == "quick" and "--profile" in document["command"]
