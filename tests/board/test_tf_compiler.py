"""The tf backend's compiler variant (issue #17): ``--variant compiler=graph|xla``, XLA through ``jit_compile=True``.

- The variant is parsed and refused like armcl's, and only tf and armcl take one.
- What a tf point records (its identity) is unchanged for the graph: a result document written before the variant
  existed (``tests/data/documents/tf_graph_schema1.json``, written by the runner of commit 5fd1ac9) is found by
  the point the runner identifies today, with no variant and with ``compiler=graph``; XLA is another point.
- XLA really runs (the document records jit_compile true), and its top-1 on the same images is the graph's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from requestflow.board.backends import parse_variant
from requestflow.board.runner import RunConfig, Runner, run
from requestflow.errors import UserError
from requestflow.results.identity import identity, point_id
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.databases import throwaway_database

STORED = Path(__file__).resolve().parents[1] / "data" / "documents" / "tf_graph_schema1.json"
GRAPH = {"graph": "tf.function", "jit_compile": False}


class TestTheVariant:
    @pytest.mark.parametrize("given, compiler", [(None, "graph"), ("", "graph"), ({}, "graph"), ("compiler=xla", "xla"),
                                                 ("compiler=XLA", "xla"), ('{"compiler": "graph"}', "graph"),
                                                 ({"compiler": "xla"}, "xla")])
    def test_the_compiler_is_read_from_text_json_or_a_dict(self, given, compiler):
        assert parse_variant("tf", given) == {"compiler": compiler}

    @pytest.mark.parametrize("given, message", [
        ("compiler=tensorrt", "compiler 'tensorrt'; known: graph, xla"),
        ("layout=NCHW", "unknown key 'layout' for tf; known: compiler"),
        ("compiler", "is not compiler=graph|xla"),
        ('["xla"]', "is not compiler=graph|xla"),
    ])
    def test_a_bad_variant_is_refused_naming_what_is_wrong(self, given, message):
        with pytest.raises(UserError, match=message.replace("|", r"\|")):
            RunConfig(model="mobilenet-v1-0.25-128", backend="tf", variant=given).validate()

    def test_tflite_has_no_variant_and_says_which_backends_do(self):
        with pytest.raises(UserError, match="the tflite backend has no variants .*tf has: compiler"):
            RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", variant="compiler=xla").validate()


def context_of(models_dir, variant=None, mode="performance", **settings) -> dict:
    config = RunConfig(model="mobilenet-v1-0.25-224", backend="tf", mode=mode,
                       weights=[str(models_dir / "mobilenet_v1_0.25_224.h5")], threads=1, cpus=[0], variant=variant,
                       progress=False, **settings)
    config.validate()
    runner = Runner(config)
    runner.prepare()
    return runner.identify()


class TestIdentity:
    def test_a_document_written_before_the_variant_finds_its_point(self, models_dir):
        stored = json.loads(STORED.read_text())
        assert stored["schema_version"] == 1 and stored["context"]["backend"]["variant"] == GRAPH
        with throwaway_database() as url:
            from requestflow.results.database import sqlalchemy_url

            engine = create_engine(sqlalchemy_url(url))
            load_documents(engine, [(STORED.name, stored)], board="local")
            _, rows = read_only(engine, "SELECT point_id FROM points")
            engine.dispose()
        (stored_point,), = rows
        for variant in (None, "compiler=graph"):
            context = context_of(models_dir, variant)
            assert context["backend"]["variant"] == GRAPH
            if context["backend"]["version"] == stored["context"]["backend"]["version"]:
                assert point_id("local", context) == stored_point
            else:  # TensorFlow was upgraded since: another library build, the rest of the identity the same
                mine, theirs = identity("local", context), identity("local", stored["context"])
                assert {**mine, "library_build": None} == {**theirs, "library_build": None}
        xla = context_of(models_dir, "compiler=xla")
        assert xla["backend"]["variant"] == {"graph": "tf.function", "jit_compile": True}
        assert point_id("local", xla) != stored_point


class TestXla:
    def test_xla_runs_and_classifies_the_images_as_the_graph_does(self, models_dir):
        documents = {}
        for compiler in ("graph", "xla"):
            documents[compiler] = run(RunConfig(
                model="mobilenet-v1-0.25-224", backend="tf", mode="accuracy", limit=10, threads=1, cpus=[0],
                weights=[str(models_dir / "mobilenet_v1_0.25_224.h5")], variant=f"compiler={compiler}",
                progress=False))
        graph, xla = documents["graph"], documents["xla"]
        assert graph["status"] == xla["status"] == "ok"
        assert xla["context"]["backend"]["variant"]["jit_compile"] is True
        assert graph["context"]["backend"]["variant"]["jit_compile"] is False
        assert xla["accuracy"]["top1"] == graph["accuracy"]["top1"]
        assert [p["top5"][0][0] for p in xla["predictions"]] == [p["top5"][0][0] for p in graph["predictions"]]
