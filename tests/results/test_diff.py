"""Misprediction diff on real runner documents: TFLite (uint8) and TensorFlow (the same weights, dequantized to
fp32) classify the same shared ImageNet images; the store's diff must be exactly the disagreement computed here from
the two documents' own predictions. Also: only common images count, the refusals, the CLI and the point page."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import create_engine

from requestflow.board.runner import RunConfig, run
from requestflow.errors import UserError
from requestflow.results.database import sqlalchemy_url
from requestflow.results.diff import mispredictions, scoreboard_point_of
from requestflow.results.identity import point_id
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from requestflow.results.reference import import_reference
from tests.databases import throwaway_database
from tests.scoreboard_app import logged_in_client

MODEL = "mobilenet-v1-0.25-128"
BOARD = "local"


def accuracy(model: str, backend: str, weights, images=None, val_txt=None, limit=None) -> dict:
    """An accuracy run on the first ``limit`` shared images, or on the folder ``images`` (ground truth ``val_txt``)."""
    document = run(RunConfig(model=model, backend=backend, mode="accuracy", weights=[str(weights)],
                             images=str(images) if images else None, val_txt=str(val_txt) if val_txt else None,
                             limit=limit, progress=False))
    assert document["status"] == "ok", document.get("error")
    return document


def subset(val_dir, tmp_path_factory, name: str, start: int, stop: int):
    """A folder of links to the shared images start..stop-1 (in file-name order)."""
    folder = tmp_path_factory.mktemp(name) / "val"
    folder.mkdir()
    for image in sorted(val_dir.iterdir())[start:stop]:
        (folder / image.name).symlink_to(image)
    return folder


@pytest.fixture(scope="module")
def documents(models_dir, val_dir, tmp_path_factory) -> dict[str, dict]:
    quant = models_dir / "mobilenet_v1_0.25_128_quant.tflite"
    val_txt = val_dir.parent / "val.txt"
    shifted = subset(val_dir, tmp_path_factory, "shifted", 60, 160)
    disjoint = subset(val_dir, tmp_path_factory, "disjoint", 200, 210)
    out = {
        "tflite": accuracy(MODEL, "tflite", quant, limit=100),  # the first 100 shared images
        "tf": accuracy(MODEL, "tf", quant, limit=100),  # the same images and weights, computed in fp32
        # images 60..159: 40 in common with the two above
        "tf_shifted": accuracy(MODEL, "tf", quant, images=shifted, val_txt=val_txt),
        # images 200..209: none in common
        "disjoint": accuracy(MODEL, "tflite", quant, images=disjoint, val_txt=val_txt),
        "other_model": accuracy("mobilenet-v1-0.25-160", "tflite", models_dir / "mobilenet_v1_0.25_160_quant.tflite",
                                limit=10),
        "performance": run(RunConfig(model=MODEL, backend="tflite", weights=[str(quant)], repetitions=3, warmup=0,
                                     progress=False)),
    }
    assert out["performance"]["status"] == "ok"
    return out


@pytest.fixture(scope="module")
def store(documents, data_dir):
    """Everything on board local, but the disjoint run on another board (on local it would share the scoreboard row
    of the first tflite run: same configuration), and the published reference board (no predictions)."""
    boards = {name: "other" if name == "disjoint" else BOARD for name in documents}
    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        results = {}
        for name, document in documents.items():
            results[name] = load_documents(engine, [(name, document)], boards[name]).result_ids[0]
        import_reference(engine, data_dir / "request-asplos18" / "hikey960-mobilenets.csv")
        ids = {name: point_id(boards[name], d["context"]) for name, d in documents.items()}
        yield engine, url, ids, results
        engine.dispose()


def by_image(document: dict) -> dict[str, dict]:
    return {p["file"]: p for p in document["predictions"]}


def expected_differences(a: dict, b: dict) -> list[tuple]:
    """Computed from the two documents alone: (image, truth, a's top-1, a's score, b's top-1, b's score) for the
    images both classified whose top-1 differs."""
    pa, pb = by_image(a), by_image(b)
    return [(f, pa[f]["label"], pa[f]["top5"][0][0], pa[f]["top5"][0][1], pb[f]["top5"][0][0], pb[f]["top5"][0][1])
            for f in sorted(set(pa) & set(pb)) if pa[f]["top5"][0][0] != pb[f]["top5"][0][0]]


def observed(diff) -> list[tuple]:
    return [(d.image, d.truth, d.a_top1, pytest.approx(d.a_score, rel=1e-6), d.b_top1,
             pytest.approx(d.b_score, rel=1e-6)) for d in diff.differences]


def synset_names(data_dir) -> list[str]:
    return [line.split(" ", 1)[1] for line in (data_dir / "imagenet" / "synset_words.txt").read_text().splitlines()]


class TestTheDiff:
    def test_it_is_the_two_documents_own_disagreement(self, store, documents, data_dir):
        engine, _, ids, _ = store
        a, b = documents["tflite"], documents["tf"]
        expected = expected_differences(a, b)
        # uint8 against the same network in fp32 disagrees on a few of these 100 images (6 when written); a diff
        # that found nothing would prove little
        assert expected
        diff = mispredictions(engine, ids["tflite"], ids["tf"])
        assert observed(diff) == expected
        assert diff.common == 100 and diff.agreement == (100 - len(expected)) / 100
        assert diff.a.top1_common == a["accuracy"]["top1"] and diff.b.top1_common == b["accuracy"]["top1"]
        assert (diff.a.backend, diff.b.backend, diff.a.precision, diff.b.precision) == ("tflite", "tf", "uint8", "fp32")
        names = synset_names(data_dir)
        for d in diff.differences:
            assert (d.truth_name, d.a_name, d.b_name) == (names[d.truth], names[d.a_top1], names[d.b_top1])
            assert d.a_top5 == [c for c, _ in by_image(a)[d.image]["top5"]] and d.b_truth is None

    def test_sides_by_prefix_or_result_id_and_in_either_order(self, store, documents):
        engine, _, ids, results = store
        full = mispredictions(engine, ids["tflite"], ids["tf"])
        assert observed(mispredictions(engine, ids["tflite"][:10], f"result:{results['tf']}")) == observed(full)
        assert [d.image for d in mispredictions(engine, str(results["tf"]), ids["tflite"][:6]).differences] == \
            [d.image for d in full.differences]
        swapped = mispredictions(engine, ids["tf"], ids["tflite"])
        assert [(d.image, d.a_top1, d.b_top1) for d in swapped.differences] == \
            [(d.image, d.b_top1, d.a_top1) for d in full.differences]

    def test_only_the_images_both_classified_are_compared(self, store, documents):
        engine, _, ids, _ = store
        diff = mispredictions(engine, ids["tflite"], ids["tf_shifted"])
        assert diff.common == 40 and diff.a.images == 100 and diff.b.images == 100
        assert observed(diff) == expected_differences(documents["tflite"], documents["tf_shifted"])

    @pytest.mark.parametrize(("a", "b", "message"), [
        ("tflite", "other_model", "different models (mobilenet-v1-0.25-128 and mobilenet-v1-0.25-160)"),
        ("tflite", "disjoint", "have no image in common"),
        ("performance", "tf", "is a performance point, not an accuracy point; the accuracy point of the same "
                              "configuration is"),
        ("tflite", "reference", "has no per-image predictions (the published reference results have none)"),
        ("tflite", "zz", "neither a point id"),
        ("tflite", "result:999999", "no result 999999"),
    ])
    def test_what_cannot_be_compared_is_refused_clearly(self, store, a, b, message):
        engine, _, ids, _ = store
        _, rows = read_only(engine, "SELECT s.accuracy_point_id FROM scoreboard s WHERE s.board = "
                                    "'hikey960-request-asplos18' AND s.model = %(m)s LIMIT 1", {"m": MODEL})
        ids = {**ids, "reference": rows[0][0]}
        with pytest.raises(UserError, match=re.escape(message)):
            mispredictions(engine, ids.get(a, a), ids.get(b, b))

    def test_an_unknown_or_ambiguous_prefix_is_refused(self, store, monkeypatch):
        from requestflow.results import diff as diff_module

        engine, _, ids, results = store
        _, rows = read_only(engine, "SELECT point_id FROM points")
        taken = [p for (p,) in rows]
        unknown = next(f"{i:06x}" for i in range(0xa00000, 1 << 24) if not any(p.startswith(f"{i:06x}") for p in taken))
        with pytest.raises(UserError, match=f"B: no point id starts with '{unknown}'"):
            mispredictions(engine, ids["tflite"], unknown)
        with pytest.raises(UserError, match="A: no result 9999999, and no point id starts with '9999999'"):
            mispredictions(engine, "9999999" if not any(p.startswith("9999999") for p in taken) else "x", ids["tf"])
        # ~300 points: a one-digit prefix is shared by many (allowed here, to make the ambiguity certain)
        monkeypatch.setattr(diff_module, "MIN_PREFIX", 1)
        letter = next(c for c in "abcdef" if sum(p.startswith(c) for p in taken) >= 3)
        with pytest.raises(UserError, match=f"'{letter}' is the start of 3 point ids"):
            mispredictions(engine, ids["tflite"], letter)
        digit = next(str(d) for d in range(1, 10) if any(p.startswith(str(d)) for p in taken))
        assert int(digit) <= max(results.values())  # a result id as well
        with pytest.raises(UserError, match=f"'{digit}' is both result {digit} and the start of point"):
            mispredictions(engine, ids["tflite"], digit)


class TestTheCommand:
    def test_table_csv_and_json(self, store, documents, run_cli):
        _, url, ids, _ = store
        expected = expected_differences(documents["tflite"], documents["tf"])
        code, stdout, stderr = run_cli("diff", ids["tflite"][:12], ids["tf"][:12], "--db", url)
        assert code == 0, stderr
        assert f"100 images in common (a only: 0, b only: 0); top-1 differs on {len(expected)}" in stdout
        assert f"({len(expected)} row{'s' if len(expected) != 1 else ''})" in stdout
        for image, *_ in expected:
            assert image in stdout
        code, stdout, _ = run_cli("diff", ids["tflite"], ids["tf"], "--format", "csv", "--db", url)
        lines = stdout.splitlines()
        assert code == 0 and lines[0] == "image,truth,truth_name,a_top1,a_name,a_score,b_top1,b_name,b_score"
        assert [line.split(",")[0] for line in lines[1:]] == [e[0] for e in expected]
        code, stdout, _ = run_cli("diff", ids["tflite"], ids["tf"], "--format", "json", "--db", url)
        data = json.loads(stdout)
        assert code == 0 and data["common"] == 100 and data["differing"] == len(expected)
        assert [(d["image"], d["a_top1"], d["b_top1"]) for d in data["differences"]] == \
            [(e[0], e[2], e[4]) for e in expected]

    def test_a_refusal_is_one_line(self, store, run_cli):
        _, url, ids, _ = store
        code, stdout, stderr = run_cli("diff", ids["tflite"], ids["other_model"], "--db", url)
        assert code == 2 and stdout == "" and "Traceback" not in stderr
        assert stderr.startswith("requestflow: error: A and B are different models") and len(stderr.splitlines()) == 1


class TestThePointPage:
    def test_the_form_offers_the_other_accuracy_points_of_the_model_and_shows_the_differences(
            self, store, documents, monkeypatch):
        engine, _, ids, _ = store
        row = scoreboard_point_of(engine, ids["tflite"])  # the scoreboard row: tflite performance + accuracy
        assert row == ids["performance"]
        expected = expected_differences(documents["tflite"], documents["tf"])
        with logged_in_client(monkeypatch, engine) as client:
            page = client.get(f"/scoreboard/point/{row}")
            assert page.status_code == 200
            form = re.search(r'<form id="compare-form".*?</form>', page.text, re.S).group(0)
            assert f'action="{row}/diff"' in form
            offered = set(re.findall(r'<option value="([0-9a-f]{64})"', form))
            # the other accuracy points of 0.25_128 with predictions; not itself, not another model, not the
            # reference board's (no predictions)
            assert offered == {ids["tf"], ids["tf_shifted"], ids["disjoint"]}  # disjoint: on another board

            diff = client.get(f"/scoreboard/point/{row}/diff?with={ids['tf']}")
            assert diff.status_code == 200
            assert re.findall(r'<tr data-image="([^"]+)"', diff.text) == [e[0] for e in expected]
            assert f'<strong id="count-differing">{len(expected)}</strong>' in diff.text
            assert '<td id="count-common">100</td>' in diff.text
            assert f'href="../{row}"' in diff.text

            assert client.get(f"/scoreboard/point/{row}/diff").status_code == 400
            refused = client.get(f"/scoreboard/point/{row}/diff?with={ids['other_model']}")
            assert refused.status_code == 400 and "different models" in refused.text
            assert client.get(f"/scoreboard/point/{'0' * 64}/diff?with={ids['tf']}").status_code == 404

    def test_a_point_without_predictions_says_so(self, store, monkeypatch):
        engine, _, _, _ = store
        _, rows = read_only(engine, "SELECT point_id FROM scoreboard WHERE board = 'hikey960-request-asplos18' "
                                    "LIMIT 1")
        with logged_in_client(monkeypatch, engine) as client:
            page = client.get(f"/scoreboard/point/{rows[0][0]}").text
            assert 'id="compare-form"' not in page and "no per-image predictions" in page
