"""The version report (requestflow.results.version_report, ``requestflow version-report``) on the real PostgreSQL
server: real runner documents stored as two versions of LiteRT, one slower and with changed predictions."""

from __future__ import annotations

import copy
import json

import pytest

from requestflow.errors import UserError
from requestflow.results.load import load_documents
from requestflow.results.version_report import version_report
from tests.results import test_results

documents = test_results.documents  # real runner documents (a session fixture of that module)
database, store = test_results.database, test_results.store
A, B = "1.4.0", "2.3.0"


def as_version(document: dict, version: str, day: int) -> dict:
    out = copy.deepcopy(document)
    out["context"]["backend"]["version"] = version
    out["started_at"] = f"2026-12-{day:02d}T10:00:00.000+00:00"
    out["finished_at"] = f"2026-12-{day:02d}T10:01:00.000+00:00"
    return out


def with_samples(document: dict, scale: float) -> dict:
    """``document`` with 15 chosen samples around ``scale`` ms (this machine's own spread would make the test's
    verdict depend on its load)."""
    out = copy.deepcopy(document)
    samples = [scale * 1e-3 * (1 + 0.002 * i) for i in range(15)]
    out["performance"].update(samples=samples, n=15, min=samples[0], median=samples[7], p90=samples[13],
                              mean=sum(samples) / 15)
    return out


def mispredict(document: dict, right_to_wrong: int, wrong_to_right: int) -> tuple[dict, list[str], list[str]]:
    """``document`` with the top-1 of some right images made wrong and of some wrong ones made right (their top-1
    class swapped for another), its top-1 recomputed; the images broken and fixed."""
    out = copy.deepcopy(document)
    broken, fixed = [], []
    for p in out["predictions"]:
        right = p["top5"][0][0] == p["label"]
        if right and len(broken) < right_to_wrong:
            p["top5"][0][0] = (p["label"] + 1) % 1000
            broken.append(p["file"])
        elif not right and len(fixed) < wrong_to_right:
            p["top5"][0][0] = p["label"]
            fixed.append(p["file"])
    correct = sum(p["top5"][0][0] == p["label"] for p in out["predictions"])
    out["accuracy"]["top1"] = correct / len(out["predictions"])
    return out, sorted(broken), sorted(fixed)


@pytest.fixture
def two_versions(store, documents):
    perf, acc = with_samples(documents["perf_tflite"], 1.0), documents["acc_tflite"]
    slower = as_version(with_samples(perf, 1.5), B, 2)
    changed, broken, fixed = mispredict(as_version(acc, B, 2), 2, 1)
    load_documents(store, [("a-perf", as_version(perf, A, 1)), ("a-acc", as_version(acc, A, 1)),
                           ("b-perf", slower), ("b-acc", changed),
                           ("a-tf", as_version(documents["perf_tf"], A, 1))], board="rpi")  # tf with a only
    return store, broken, fixed


class TestTheReport:
    def test_every_configuration_with_both_versions_is_compared(self, two_versions, documents):
        engine, broken, fixed = two_versions
        report = version_report(engine, "rpi", A, B, backend="tflite")
        assert [(r.model, r.mode) for r in report.rows] == [("mobilenet-v1-0.25-128", "accuracy"),
                                                            ("mobilenet-v1-0.25-128", "performance")]
        acc, perf = report.rows
        assert perf.ratio == pytest.approx(1.5) and perf.latency == "slower" and perf.p_value < 0.01
        assert perf.latency_a_ms == pytest.approx(1.014)  # the median of the chosen samples
        assert (acc.broken, acc.fixed, acc.changed) == (broken, fixed, []) and len(broken) == 2 and len(fixed) == 1
        assert acc.images == len(documents["acc_tflite"]["predictions"])
        assert acc.top1_delta == pytest.approx(-1 / acc.images)
        assert (report.only_a, report.only_b) == (0, 0)

    def test_a_configuration_with_one_version_is_counted_not_shown(self, two_versions):
        engine, _, _ = two_versions
        report = version_report(engine, "rpi", A, B)
        assert len(report.rows) == 2 and (report.only_a, report.only_b) == (1, 0)

    def test_the_same_samples_are_no_significant_difference(self, store, documents):
        perf = documents["perf_tflite"]
        load_documents(store, [("a", as_version(perf, A, 1)), ("b", as_version(perf, B, 2))], board="rpi")
        (row,) = version_report(store, "rpi", A, B).rows
        assert (row.ratio, row.latency) == (1.0, "no significant difference")

    @pytest.mark.parametrize("a, b, message", [
        (A, "9.9", "board 'rpi' has no result with library version '9.9'; it has: 1.4.0, 2.3.0"),
        (A, A, "the two versions are the same"),
    ])
    def test_a_version_the_board_lacks_is_named(self, two_versions, a, b, message):
        with pytest.raises(UserError, match=message):
            version_report(two_versions[0], "rpi", a, b)


class TestThePage:
    def test_the_page_shows_each_configuration_and_the_broken_images(self, two_versions, monkeypatch):
        from pathlib import Path

        monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "plugins"))  # as Airflow does
        from requestflow_scoreboard.app import _templates

        engine, broken, _ = two_versions
        report = version_report(engine, "rpi", A, B, backend="tflite")
        html = _templates().get_template("versions.html").render(
            boards={"rpi": [A, B]}, board="rpi", a=A, b=B, report=report, home="/")
        assert html.count('<tr data-mode="') == 2 and 'data-latency="slower"' in html
        assert f"broken by {B}:" in html and ", ".join(broken) in html
        assert f'<option value="{B}" selected>' in html


class TestTheCommand:
    def test_table_and_json(self, run_cli, two_versions, database):
        code, stdout, stderr = run_cli("version-report", A, B, "--board", "rpi", "--backend", "tflite", "--db",
                                       database)
        assert code == 0, stderr
        assert "2 configuration(s) with both 1.4.0 (a) and 2.3.0 (b)" in stdout and "slower" in stdout
        assert "images broken by b:" in stdout and two_versions[1][0] in stdout
        code, stdout, _ = run_cli("version-report", A, B, "--board", "rpi", "--format", "json", "--db", database)
        rows = json.loads(stdout)["rows"]
        assert {r["mode"]: r["latency"] for r in rows} == {"accuracy": None, "performance": "slower"}
