"""The runner with a power meter: its document's ``energy`` from a fake INA3221 whose writer thread follows the run
(2 W while the backend is idle, 5 W from its first inference on), and a failing meter that leaves the latency
result standing. The backend is a stand-in whose inference is a 3 ms sleep."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from requestflow.board import backends
from requestflow.board.runner import RunConfig, Runner
from requestflow.board.schema import validate_document
from tests.fake_power import Profile

IDLE_W, ACTIVE_W = 2.0, 5.0


class SleepingBackend:
    """An inference is a 3 ms sleep; the first one turns the fake meter's profile to 5 W."""

    name, precision, classes, input_dtype = "tflite", "uint8", 1001, np.dtype(np.uint8)

    def __init__(self, profile: Profile, on_invoke=None) -> None:
        self.profile, self.on_invoke, self.invokes = profile, on_invoke, 0

    def load(self) -> None:
        time.sleep(0.01)

    def info(self) -> dict:
        return {"name": "tflite", "version": "stand-in", "threads": 1}

    def set_input(self, batch) -> None:
        pass

    def invoke(self) -> None:
        if self.invokes == 0:
            self.profile.set(ACTIVE_W)
        self.invokes += 1
        if self.on_invoke is not None:
            self.on_invoke(self.invokes)
        time.sleep(0.003)

    def scores(self):
        return np.zeros((1, 1000), np.float32)

    def close(self) -> None:
        self.profile.set(IDLE_W)

    def after_close(self) -> dict:
        return {}


@pytest.fixture
def meter_tree(tmp_path):
    profile = Profile(tmp_path, "ina3221", IDLE_W)
    profile.start()
    yield tmp_path, profile
    profile.stop()


def run_with(monkeypatch, root, profile, on_invoke=None, **settings) -> dict:
    monkeypatch.setattr(backends, "create_backend", lambda *args, **kwargs: SleepingBackend(profile, on_invoke))
    config = RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=["random"], progress=False,
                       power_meter=f"hwmon:{root}", idle_s=1.0, **{"repetitions": 300, "warmup": 2, **settings})
    runner = Runner(config)
    runner.prepare()
    return runner.run()


def test_the_document_gets_the_energy_of_the_profile(monkeypatch, meter_tree):
    root, profile = meter_tree
    document = run_with(monkeypatch, root, profile)
    validate_document(document)
    energy, performance = document["energy"], document["performance"]
    assert energy["valid"], energy["reason"]
    runs = performance["n"]
    assert energy["inferences"] == runs == 300
    # the profile: 5 W over the timed region, 2 W idle
    assert energy["joules_per_inference"] == pytest.approx(ACTIVE_W * performance["duration_s"] / runs, rel=0.02)
    assert energy["joules_per_inference_above_idle"] == pytest.approx(
        (ACTIVE_W - IDLE_W) * performance["duration_s"] / runs, rel=0.02)
    assert energy["idle_w"] == pytest.approx(IDLE_W, rel=0.02)
    assert energy["meter"]["kind"] == "hwmon" and energy["meter"]["channels"][0]["label"] == "ina3221 VDD_IN"
    assert energy["rate_hz"] > 100
    assert len(energy["trace"]["t_s"]) <= 200


def test_a_meter_that_disappears_mid_run_leaves_the_latency_standing(monkeypatch, meter_tree):
    root, profile = meter_tree

    def unplug(invokes):
        if invokes == 150:
            with profile.lock:
                profile.paused = True
            shutil.rmtree(root / "sys/class/hwmon/hwmon0")

    document = run_with(monkeypatch, root, profile, on_invoke=unplug)
    validate_document(document)
    assert document["status"] == "ok" and document["performance"]["n"] == 300
    assert document["performance"]["quality"]["verdict"] in ("VALID", "FLAGGED")
    energy = document["energy"]
    assert not energy["valid"] and "No such file" in energy["reason"]
    assert energy["joules_per_inference"] is None


def test_without_a_meter_there_is_no_energy(monkeypatch, meter_tree):
    root, profile = meter_tree
    monkeypatch.setattr(backends, "create_backend", lambda *args, **kwargs: SleepingBackend(profile))
    runner = Runner(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=["random"], progress=False,
                              repetitions=5))
    runner.prepare()
    document = runner.run()
    validate_document(document)
    assert "energy" not in document
