"""The calibration workload (``requestflow.board.calibration``): timed just before and just after a performance
point's timed region, stored in ``performance.calibration``, and judged by the quality verdict's calibration check.
The backend is a stand-in that records when it runs."""

from __future__ import annotations

import numpy as np
import pytest

from requestflow.board import backends, calibration, quality
from requestflow.board.runner import RunConfig, Runner
from requestflow.board.schema import validate_document


class RecordingBackend:
    """Every inference 1 ms of sleep; ``events`` says what ran in which order."""

    name, precision, classes, input_dtype = "tflite", "uint8", 1001, np.dtype(np.uint8)

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def load(self) -> None:
        pass

    def info(self) -> dict:
        return {"name": "tflite", "version": "stand-in", "threads": 1}

    def set_input(self, batch) -> None:
        pass

    def invoke(self) -> None:
        import time

        self.events.append("invoke")
        time.sleep(0.001)

    def scores(self):
        return np.zeros((1, 1000), np.float32)

    def close(self) -> None:
        pass

    def after_close(self) -> dict:
        return {}


def run(monkeypatch, events: list[str], **settings) -> dict:
    monkeypatch.setattr(backends, "create_backend", lambda *args, **kwargs: RecordingBackend(events))
    timed = calibration.Calibration.time

    def recorded(self, side, like_cpu_s=None):
        events.append(f"calibration {side}")
        timed(self, side, like_cpu_s)

    monkeypatch.setattr(calibration.Calibration, "time", recorded)
    between = calibration.Calibration.between

    def recorded_between(self):
        events.append("calibration during")
        between(self)

    monkeypatch.setattr(calibration.Calibration, "between", recorded_between)
    runner = Runner(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=["random"], progress=False,
                              **settings))
    runner.prepare()
    document = runner.run()
    validate_document(document)
    return document


def test_every_performance_point_times_the_calibration_just_before_and_just_after_its_timed_region(monkeypatch):
    events: list[str] = []
    document = run(monkeypatch, events, repetitions=10, warmup=2)
    # 2 warm-up runs, one more (its CPU time sizes the calibration's samples), the calibration, the 10 timed runs
    # with a sample between every other two of them (calibration.MIN_EVERY), the calibration after
    during = ["invoke", "invoke", "calibration during"] * 5
    assert events == ["invoke"] * 3 + ["calibration before"] + during + ["calibration after"]
    found = document["performance"]["calibration"]
    assert found["method"] == calibration.METHOD and found["unit"] == "s"
    for side in ("before", "after"):  # fewer beside the region when the runner samples during it too
        assert len(found[side]["samples"]) == calibration.SIDE_SAMPLES and min(found[side]["samples"]) > 0
        assert found[side]["median"] == pytest.approx(float(np.median(found[side]["samples"])))
    assert found["drift"] == pytest.approx(found["after"]["median"] / found["before"]["median"] - 1)
    assert found["per_sample"] >= calibration.MIN_PER_SAMPLE and found["cost_s"] > 0
    assert document["performance"]["quality"]["checks"]["calibration"]["before_s"] == found["before"]["median"]
    assert found["during"]["every"] == 2 and len(found["during"]["samples"]) == 5
    assert found["during"]["median"] == pytest.approx(float(np.median(found["during"]["samples"])))


def test_the_samples_during_the_timed_region_come_between_runs_never_inside_a_runs_timing(monkeypatch):
    """One sample every repetitions // DURING runs (every 3 of 100 here), between two runs."""
    events: list[str] = []
    document = run(monkeypatch, events, repetitions=100, warmup=1)
    timed = events[events.index("calibration before") + 1: events.index("calibration after")]
    assert timed == (["invoke"] * 3 + ["calibration during"]) * 33 + ["invoke"]
    assert document["performance"]["calibration"]["during"]["every"] == 3


def test_a_sample_between_runs_is_not_in_any_runs_timing(monkeypatch):
    """Samples that take 0.2 s each (the stand-in's runs: 1 ms): no timed run took 0.2 s."""
    between = calibration.Calibration.between

    def slow_between(self):
        import time

        between(self)
        time.sleep(0.2)

    monkeypatch.setattr(calibration.Calibration, "between", slow_between)
    monkeypatch.setattr(backends, "create_backend", lambda *args, **kwargs: RecordingBackend([]))
    runner = Runner(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=["random"], progress=False,
                              repetitions=10, warmup=1))
    runner.prepare()
    document = runner.run()
    assert len(document["performance"]["calibration"]["during"]["samples"]) == 5
    assert max(document["performance"]["samples"]) < 0.2, document["performance"]["samples"]


def test_a_duration_bound_run_keeps_sampling_during_its_extra_runs(monkeypatch):
    events: list[str] = []
    # 3 s: more than 4 + 64 runs of a 1 ms sleep even when a loaded machine wakes each sleeper ~20 ms late
    document = run(monkeypatch, events, repetitions=4, warmup=1, min_duration_s=3.0)
    extra = document["performance"]["calibration"]["during"]["samples"][2:]  # 2 among the 4 repetitions
    runs = len(document["performance"]["samples"])
    assert runs > 4 + calibration.EVERY_AFTER and len(extra) == (runs - 4) // calibration.EVERY_AFTER


def test_without_warm_up_the_calibration_does_not_run_the_point_before_its_timed_region(monkeypatch):
    events: list[str] = []
    document = run(monkeypatch, events, repetitions=5, warmup=0)
    assert events == ["calibration before"] + ["invoke", "invoke", "calibration during"] * 2 + ["invoke"] + [
        "calibration after"]
    assert document["performance"]["calibration"]["per_sample"] == calibration.MIN_PER_SAMPLE


def test_a_sample_takes_about_as_much_cpu_as_one_of_the_points_runs_within_bounds():
    assert calibration.per_sample_for(0.44e-3, 20e-6) == 22
    assert calibration.per_sample_for(None, 20e-6) == calibration.MIN_PER_SAMPLE
    assert calibration.per_sample_for(1e-6, 20e-6) == calibration.MIN_PER_SAMPLE
    assert calibration.per_sample_for(2.0, 20e-6) == round(calibration.MAX_SAMPLE_S / 20e-6)  # a 2 s run: capped


def side(level: float, seed: int, noise: float = 0.005) -> dict:
    samples = (level * np.exp(np.random.default_rng(seed).normal(0, noise, calibration.SAMPLES))).tolist()
    return {"samples": samples, "median": float(np.median(samples))}


def calibrated(before: float, after: float) -> dict:
    return {"method": calibration.METHOD, "workload": calibration.WORKLOAD, "unit": "s",
            "before": side(before, 1), "after": side(after, 2)}


def point(noise: float) -> np.ndarray:
    return 1e-3 * np.exp(np.random.default_rng(7).normal(0, noise, 200))


class TestTheQualityCheck:
    def test_a_machine_ten_percent_slower_after_the_run_than_before_flags_the_point(self):
        verdict = quality.assess(point(0.01), calibration=calibrated(1e-4, 1.1e-4))
        check = verdict["checks"]["calibration"]
        assert verdict["verdict"] == quality.FLAGGED and not check["ok"]
        assert check["value"] == pytest.approx(0.10, abs=0.01) and check["limit"] == pytest.approx(0.02)
        assert verdict["reasons"] == [check["detail"]] and check["detail"].startswith("the machine changed during")

    def test_a_steady_machine_is_not_flagged(self):
        verdict = quality.assess(point(0.01), calibration=calibrated(1e-4, 1.005e-4))
        assert verdict["verdict"] == quality.VALID and verdict["checks"]["calibration"]["ok"]
        assert verdict["checks"]["calibration"]["detail"].startswith("the machine's speed held")

    def test_a_move_within_the_points_own_noise_is_not_flagged(self):
        """The point's robust spread is about 6%: a calibration 4% apart is within it (and above the 2% floor)."""
        verdict = quality.assess(point(0.06), calibration=calibrated(1e-4, 1.04e-4))
        check = verdict["checks"]["calibration"]
        assert check["ok"] and check["limit"] == pytest.approx(0.06, rel=0.2) and check["value"] > 0.03
        assert not quality.assess(point(0.01), calibration=calibrated(1e-4, 1.04e-4))["checks"]["calibration"]["ok"]

    def test_a_noisy_calibration_whose_sides_overlap_is_not_flagged(self):
        noisy = calibrated(1e-4, 1.04e-4)
        noisy["before"] = side(1e-4, 1, noise=0.3)
        assert quality.assess(point(0.01), calibration=noisy)["checks"]["calibration"]["ok"]

    def test_with_samples_during_the_region_their_halves_are_compared_instead_of_the_sides(self):
        """32 samples during the region, the second half 10% slower: flagged, though the sides agree; the same
        samples steady: not flagged, though the sides are 10% apart. Fewer than 16: the sides, as without them."""
        moved = calibrated(1e-4, 1.0e-4)
        moved["during"] = {"samples": side(1e-4, 3)["samples"] + side(1.1e-4, 4)["samples"], "every": 6}
        check = quality.assess(point(0.01), calibration=moved)["checks"]["calibration"]
        assert not check["ok"] and check["compared"] == "halves during" and "in its second half" in check["detail"]
        assert check["value"] == pytest.approx(0.1, abs=0.01)
        steady = calibrated(1e-4, 1.1e-4)
        steady["during"] = {"samples": side(1e-4, 3)["samples"] + side(1e-4, 4)["samples"], "every": 6}
        assert quality.assess(point(0.01), calibration=steady)["checks"]["calibration"]["ok"]
        steady["during"]["samples"] = steady["during"]["samples"][:15]
        check = quality.assess(point(0.01), calibration=steady)["checks"]["calibration"]
        assert not check["ok"] and check["compared"] == "sides"

    def test_a_point_without_calibration_has_no_calibration_check(self):
        assert "calibration" not in quality.assess(point(0.01))["checks"]
