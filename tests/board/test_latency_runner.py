"""The runner's latency figures (schema version 2): ``performance.latency``, duration-bound runs and their profile,
and ``cold_start`` apart from the steady state. The backend is a stand-in whose first inference is slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from requestflow.board import backends
from requestflow.board.runner import SCHEMA_VERSION, RunConfig, Runner, process_age_s
from requestflow.board.schema import validate_document
from requestflow.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ColdBackend:
    """Loading takes 50 ms, the first inference 300 ms, every later one 2 ms (slept: on a loaded machine a sleep
    of 2 ms can last tens, hence a first inference far longer than that)."""

    name, precision, classes, input_dtype = "tflite", "uint8", 1001, np.dtype(np.uint8)

    def __init__(self) -> None:
        self.invokes = 0

    def load(self) -> None:
        import time

        time.sleep(0.05)

    def info(self) -> dict:
        return {"name": "tflite", "version": "stand-in", "threads": 1}

    def set_input(self, batch) -> None:
        pass

    def invoke(self) -> None:
        import time

        self.invokes += 1
        time.sleep(0.3 if self.invokes == 1 else 0.002)

    def scores(self):
        return np.zeros((1, 1000), np.float32)

    def close(self) -> None:
        pass

    def after_close(self) -> dict:
        return {}


def run(monkeypatch, **settings) -> dict:
    monkeypatch.setattr(backends, "create_backend", lambda *args, **kwargs: ColdBackend())
    runner = Runner(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=["random"], progress=False,
                              **settings))
    runner.prepare()
    document = runner.run()
    validate_document(document)
    return document


def test_every_performance_point_has_its_percentiles_intervals_and_early_stopping(monkeypatch):
    document = run(monkeypatch, repetitions=70, warmup=1)
    assert document["schema_version"] == SCHEMA_VERSION == 2
    latency = document["performance"]["latency"]
    assert latency["n"] == 70 and latency["p90"]["value"] == document["performance"]["p90"]
    assert latency["p50"]["ci_s"][0] <= document["performance"]["median"] <= latency["p50"]["ci_s"][1]
    assert latency["early_stopping"]["p90"]["met"] and latency["early_stopping"]["p90"]["min_queries"] == 64
    assert not latency["early_stopping"]["p99"]["met"]
    assert document["performance"]["profile"] == {"name": "custom", "min_repetitions": 70, "warmup": 1,
                                                  "min_duration_s": 0.0}


def test_a_duration_bound_run_goes_on_until_the_timed_region_lasted_long_enough(monkeypatch):
    # 2 s: five runs of a 2 ms sleep take far less, even when a loaded machine wakes each sleeper tens of ms late
    document = run(monkeypatch, repetitions=5, warmup=1, min_duration_s=2.0)
    performance = document["performance"]
    assert performance["duration_s"] >= 2.0
    assert performance["n"] > 5 and performance["n"] == len(performance["samples"])
    assert performance["repetitions"] == 5 and document["context"]["repetitions"] == 5  # the point's identity
    short = run(monkeypatch, repetitions=5, warmup=1)["performance"]
    assert short["n"] == 5 and short["profile"]["min_duration_s"] == 0.0


def test_cold_start_is_kept_apart_from_the_steady_state(monkeypatch):
    document = run(monkeypatch, repetitions=20, warmup=3)
    cold = document["cold_start"]
    assert cold["first_inference_s"] >= 0.3 and cold["first_over_median"] > 10
    assert max(document["performance"]["samples"]) < 0.3  # the slow first run is not among the timed ones
    assert cold["backend_load_s"] == document["timings"]["setup_s"] >= 0.05
    no_warmup = run(monkeypatch, repetitions=20, warmup=0)
    assert no_warmup["cold_start"]["first_inference_s"] == no_warmup["performance"]["samples"][0] >= 0.3


def test_process_start_to_ready_counts_the_imports_in_a_fresh_process(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, "-m", "requestflow.cli", "run", "--model", "mobilenet-v1-0.25-128", "--weights",
                    "random", "--repetitions", "3", "--warmup", "1", "--quiet", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    document = json.loads(out.read_text())
    cold = document["cold_start"]
    assert cold["first_in_process"] is True
    assert cold["process_start_to_ready_s"] > cold["backend_load_s"] > 0
    assert cold["first_inference_s"] > 0
    assert document["performance"]["profile"]["name"] == "custom"
    assert process_age_s() > 0


def test_bad_measurement_settings_are_refused_before_anything_runs():
    for settings, message in (({"min_duration_s": -1.0}, "--min-duration-s must be a number >= 0"),
                              ({"min_duration_s": float("inf")}, "--min-duration-s"),
                              ({"power_rate_hz": 0}, "--power-rate-hz"),
                              ({"profile": "slow"}, "unknown profile 'slow'"),
                              ({"mode": "accuracy", "power_meter": "rapl"}, "accuracy runs are not timed")):
        with pytest.raises(UserError, match=message):
            RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", **settings).validate()


def test_the_command_line_applies_the_profile(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "create_backend", lambda *args, **kwargs: ColdBackend())
    out = tmp_path / "r.json"
    code, text, errors = run_cli("run", "--model", "mobilenet-v1-0.25-128", "--weights", "random", "--quiet", "--out",
                         str(out), "--profile", "valid", "--min-duration-s", "0.2")
    assert code == 0, errors
    performance = json.loads(out.read_text())["performance"]
    assert performance["profile"] == {"name": "custom", "min_repetitions": 64, "warmup": 3, "min_duration_s": 0.2}
    assert performance["n"] >= 64
    assert "early-stopping p90" in text
