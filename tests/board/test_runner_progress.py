"""The runner's progress lines (``Heartbeat``, issue #22): written to ``$REQUESTFLOW_PROGRESS`` under --quiet too,
so that the controller's wait loop sees a runner that makes progress, and how long the rest should take."""

from __future__ import annotations

import json

from requestflow.board import runner


def progress(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_quiet_performance_run_reports_its_stages_and_what_its_warm_up_implies(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv(runner.PROGRESS_ENV, str(tmp_path / "progress.jsonl"))
    code, _, _ = run_cli("run", "--quiet", "--model", "mobilenet-v1-0.25-128", "--backend", "tflite", "--weights",
                         "random", "--repetitions", "40", "--warmup", "4", "--threads", "1", "--out",
                         tmp_path / "result.json")
    assert code == 0
    lines = progress(tmp_path / "progress.jsonl")
    assert [(line["stage"], line["done"], line["total"]) for line in lines[:3]] == [
        ("setup", 0, 1), ("warmup", 0, 4), ("repetitions", 0, 40)]
    warm = json.loads((tmp_path / "result.json").read_text())["performance"]["median"]
    assert 0 < lines[2]["expect_s"] < 40 * warm * 100  # the warm-up's pace times the repetitions


def test_lines_come_at_most_every_interval_with_the_pace_so_far(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    beat = runner.Heartbeat(str(tmp_path / "progress.jsonl"))
    beat.stage("classify", 10)
    for done in range(1, 11):
        clock[0] += 0.4  # 0.4 s an image
        beat.beat(done)
    lines = progress(tmp_path / "progress.jsonl")
    assert [line["done"] for line in lines] == [0, 3, 6, 9]  # one a second at most
    assert lines[1]["expect_s"] == 2.8  # 7 images left at 0.4 s
    assert "expect_s" not in lines[0]  # no pace known yet


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    beat = runner.Heartbeat(None)
    beat.stage("classify", 3)
    beat.beat(3, force=True)
    assert list(tmp_path.iterdir()) == []
