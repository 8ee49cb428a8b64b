"""Property-based tests (hypothesis) of the two doors where outside input comes in:

- the results loader (``requestflow.results.load``: ``validate`` and ``load_documents``), fed arbitrary JSON-ish
  documents and mutations of real runner documents (fields removed, replaced by values of the wrong type, huge
  numbers, NaN and infinities, unicode with NUL characters and lone surrogates, extra nesting, unknown fields): a
  document either loads or is refused with a ``UserError`` naming the source and what is wrong, never another
  exception, and a refused load leaves every table as it was;
- the sweep's trigger form (``dags.factory.params()``, validated as Airflow validates a trigger's conf: merged
  into a ``ParamsDict`` key by key, then ``validate()``), fed arbitrary confs: either ``ParamValidationError``, or
  params on which ``plan()`` lists points for every board whose command lines the runner accepts.
"""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from requestflow.errors import UserError
from requestflow.results.document import check_document

# No example database in the work tree (the suite runs from a clean clone in CI); no deadline: every example
# talks to PostgreSQL. A failure prints the seed blob that reproduces it (@reproduce_failure).
SETTINGS = dict(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TABLES = ("boards", "platform_snapshots", "library_builds", "models", "weights", "datasets", "sweeps", "points",
          "results", "performance", "samples", "accuracy", "predictions", "errors", "point_failures")
SOURCE = "mutant.json"
UNIQUE = itertools.count()  # makes each "good" companion document a new one

# -- JSON-ish values, the nasty ones included ---------------------------------------------------------------------
NASTY_NUMBERS = st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**40, -(10**400), 1e308, -1e308, 5e-324,
                                 float("nan"), float("inf"), float("-inf"), -0.0, True, False])
NASTY_TEXT = st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "\udfff x", "\u202e", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "é" * 500,
                              "null", "NaN", "1e999", "2026-13-45T99:99:99Z", "9999-12-31T23:59:59+14:00",
                              "0001-01-01T00:00:00", "1", "'; DROP TABLE results; --", "x" * 5000])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | NASTY_NUMBERS
           | NASTY_TEXT)
JSONISH = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                       | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=10)


def _paths(value, prefix: tuple = ()):
    """Every path into a document (dict keys, the first 3 items of a list), down to 50 levels: a "nest" mutation's
    thousand levels are the loader's to walk, not this helper's (recursing into them exceeded Python's limit)."""
    yield prefix
    if len(prefix) >= 50:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            yield from _paths(child, (*prefix, index))


def _parent(document, path: tuple):
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


def mutate(data, document: dict) -> tuple[dict, list[str]]:
    """1 to 4 mutations of a copy of ``document``, drawn from ``data``; the document and what was done."""
    document = copy.deepcopy(document)
    done = []
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = [p for p in _paths(document) if p]
        path = data.draw(st.sampled_from(paths), label="path")
        parent, key = _parent(document, path), path[-1]
        operation = data.draw(st.sampled_from(["replace", "replace", "delete", "wrap", "add", "nest"]),
                              label="operation")
        if operation == "replace":
            parent[key] = data.draw(JSONISH, label="value")
        elif operation == "delete":
            del parent[key]
        elif operation == "wrap":
            parent[key] = data.draw(st.sampled_from([[parent[key]], {"value": parent[key]}]), label="wrapped")
        elif operation == "add" and isinstance(parent[key], dict):
            parent[key][data.draw(st.text(max_size=10), label="new key")] = data.draw(JSONISH, label="new value")
        elif operation == "nest":  # deep nesting: a thousand levels of lists
            parent[key] = json.loads("[" * 1000 + "1" + "]" * 1000)
        done.append(f"{operation} {'/'.join(map(str, path))}")
    return document, done


# -- fixtures: real documents, a throwaway results database ------------------------------------------------------
@pytest.fixture(scope="module")
def real_documents(models_dir) -> dict[str, dict]:
    """Documents the runner wrote: a performance run, an accuracy run (with predictions) and a failed run."""
    from requestflow.board.runner import RunConfig, run

    quant = str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    performance = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=[quant], repetitions=4,
                                warmup=1, progress=False))
    accuracy = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", mode="accuracy", weights=[quant],
                             limit=3, progress=False))
    failed = copy.deepcopy(performance)
    failed.update(status="failed", error={"type": "RuntimeError", "message": "board fell over"})
    failed.pop("performance")
    return {"performance": performance, "accuracy": accuracy, "failed": failed}


@pytest.fixture(scope="module")
def store():
    from requestflow.results.database import sqlalchemy_url
    from tests.databases import throwaway_database

    with throwaway_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        yield engine
        engine.dispose()


def counts(engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def load_or_refuse(engine, documents: list[tuple[str, object]], blamed: str = SOURCE):
    """Load ``(source, document)`` pairs in one call: the report, or the UserError it was refused with, after
    checking that the error names ``blamed`` and says something, and that nothing at all was written (not even the
    good documents of the batch). Any other exception fails the test."""
    from requestflow.results.load import load_documents

    before = counts(engine)
    try:
        return load_documents(engine, documents, board="prop-board", sweep="prop-sweep")
    except UserError as refused:
        assert str(refused).startswith(f"{blamed}: "), f"the error does not name the source: {refused}"
        assert len(str(refused)) > len(blamed) + 2
        assert counts(engine) == before, "a refused load wrote rows"
        return refused


def good_companion(real_documents: dict) -> tuple[str, dict]:
    """A valid document never loaded before (its command line says which example it belongs to)."""
    document = copy.deepcopy(real_documents["performance"])
    document["command"] = ["requestflow", "run", f"--example={next(UNIQUE)}"]
    return "good.json", document


class TestTheResultLoader:
    def test_the_real_documents_load(self, store, real_documents):
        for name, document in real_documents.items():
            report = load_or_refuse(store, [(name, document)], name)
            assert not isinstance(report, UserError), report

    @settings(max_examples=60, **SETTINGS)
    @given(document=JSONISH | st.dictionaries(st.sampled_from(
        ["schema_version", "requestflow_version", "status", "started_at", "finished_at", "context", "machine",
         "timings", "performance", "accuracy", "predictions", "error"]), JSONISH, max_size=12))
    def test_arbitrary_json_is_refused_clearly(self, store, document):
        try:
            check_document(document, SOURCE)
        except UserError as refused:
            assert str(refused).startswith(f"{SOURCE}: ")
        else:  # a document needs far more structure than chance gives
            pytest.fail(f"an arbitrary document passed validation: {document!r}")
        assert isinstance(load_or_refuse(store, [(SOURCE, document)]), UserError)

    @settings(max_examples=250, **SETTINGS)
    @given(data=st.data())
    def test_a_mutated_real_document_loads_or_is_refused_clearly_and_whole(self, store, real_documents, data):
        name = data.draw(st.sampled_from(sorted(real_documents)), label="document")
        document, done = mutate(data, real_documents[name])
        # in one batch with a good document: a refusal must not write that one either
        batch = [good_companion(real_documents), (SOURCE, document)]
        outcome = load_or_refuse(store, batch)
        event("refused" if isinstance(outcome, UserError) else "loaded")
        if not isinstance(outcome, UserError):  # it loaded: then it was valid, and loading it again is a no-op
            assert "good.json" in outcome.loaded, (done, outcome)
            check_document(document, SOURCE)
            again = load_or_refuse(store, batch)
            assert not isinstance(again, UserError) and again.loaded == [], (done, again)
        else:  # `requestflow validate` runs the loader's checks: what the store refuses, validate refuses
            with pytest.raises(UserError):
                check_document(document, SOURCE)

    @settings(max_examples=40, **SETTINGS)
    @given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=2**31),
           field=st.sampled_from([("performance", "median"), ("performance", "samples"), ("performance", "n"),
                                  ("context", "threads"), ("context", "batch_size"), ("timings", "total_s"),
                                  ("context", "model", "resolution"), ("machine", "cpu_count")]))
    def test_numbers_the_store_cannot_hold_are_refused_not_crashed_on(self, store, real_documents, value, field):
        document = copy.deepcopy(real_documents["performance"])
        node = document
        for part in field[:-1]:
            node = node[part]
        node[field[-1]] = [value] * 3 if field[-1] == "samples" else value
        outcome = load_or_refuse(store, [(SOURCE, document)])
        if isinstance(value, float) and not math.isfinite(value):
            assert isinstance(outcome, UserError), f"{field} = {value} was stored"
        try:  # `requestflow validate` says the same as the store, without one
            check_document(document, SOURCE)
            valid = True
        except UserError:
            valid = False
        assert valid == (not isinstance(outcome, UserError)), (field, value, outcome)


# -- the trigger form --------------------------------------------------------------------------------------------
BOARDS = ("local", "rfb1", "rfb2")


@pytest.fixture(scope="module")
def sweep_params():
    """The sweep's Params, built for an inventory of three boards."""
    import os

    saved = os.environ.get("REQUESTFLOW_BOARDS")
    os.environ["REQUESTFLOW_BOARDS"] = ",".join(BOARDS)
    try:
        from dags.factory import params

        yield params()
    finally:
        if saved is None:
            os.environ.pop("REQUESTFLOW_BOARDS", None)
        else:
            os.environ["REQUESTFLOW_BOARDS"] = saved


def _field_values(params: dict) -> dict:
    """For each Param, values near what it accepts (its enum items, its bounds and beyond) and arbitrary ones."""
    strategies = {}
    for name, param in params.items():
        schema = param.schema
        near = [param.value]
        items = (schema.get("items") or {}).get("enum")
        if items:
            choice = st.sampled_from(items) | st.text(max_size=12)
            near.append(st.lists(choice, max_size=5))
        if schema.get("enum"):
            near.append(st.sampled_from(schema["enum"]))
        for bound in ("minimum", "maximum"):
            if bound in schema:
                near += [schema[bound], schema[bound] - 1, schema[bound] + 1, float(schema[bound])]
        if "pattern" in schema:
            near.append(st.from_regex(schema["pattern"]))
            near.append(st.from_regex(schema["pattern"]).map(lambda s: s + "\n"))
            near.append("0-" + "9" * 12)  # matches the pattern; a runner that made this range filled the memory
        values = [v if isinstance(v, st.SearchStrategy) else st.just(v) for v in near]
        strategies[name] = st.one_of(*values, JSONISH)
    return strategies


@st.composite
def confs(draw, params: dict):
    strategies = _field_values(params)
    names = draw(st.lists(st.sampled_from(sorted(strategies)), unique=True, max_size=len(strategies)))
    conf = {name: draw(strategies[name]) for name in names}
    if draw(st.booleans()):  # keys the form does not know
        conf.update(draw(st.dictionaries(st.text(max_size=8), JSONISH, max_size=2)))
    return conf


def trigger(params: dict, conf: dict) -> dict:
    """What Airflow does with a trigger's conf (``process_params``): each key merged, then the whole validated."""
    from airflow.sdk.definitions.param import ParamsDict

    merged = ParamsDict(copy.deepcopy(params))
    merged.update(conf)
    return merged.validate()


class TestTheTriggerForm:
    def test_the_defaults_plan_every_board(self, sweep_params):
        from operators.sweep import plan

        valid = trigger(sweep_params, {"boards": list(BOARDS)})
        assert all(plan(board, valid) for board in BOARDS)

    @settings(max_examples=300, **SETTINGS)
    @given(data=st.data())
    def test_a_conf_is_refused_or_plans_points_the_runner_accepts(self, sweep_params, data):
        import shlex

        from airflow.sdk.exceptions import ParamValidationError

        from operators.run_point import runner_command
        from operators.sweep import plan

        conf = data.draw(confs(sweep_params), label="conf")
        try:
            valid = trigger(sweep_params, conf)
        except ParamValidationError:
            event("refused by the form")
            return
        event("valid")
        for board in BOARDS:
            try:
                points = plan(board, valid)
            except ValueError as exc:  # what the form cannot express, refused by the plan task before any board
                if "armcl points need an ArmCL build" in str(exc):
                    assert "armcl" in valid["backends"] and not valid["armcl_build"], exc
                elif str(exc).startswith("weights = random"):  # no accuracy, no precision but fp32, no release
                    assert valid["weights"] == "random" and ("accuracy" in valid["modes"] or valid["release"]
                                                             or valid["precision"] not in (None, "fp32")), exc
                else:  # NaN: JSON has none, but json.loads (the CLI's --conf, the REST API) reads it
                    assert "cooldown_c must be a finite temperature" in str(exc), exc
                    assert math.isnan(valid["cooldown_c"]), exc
                return
            if board not in valid["boards"]:
                assert points == []
                continue
            variants = math.prod(len(valid[f"armcl_{k}s"]) for k in ("target", "layout", "conv_method", "tuner"))
            per_model = sum(variants if b == "armcl" else 1 for b in valid["backends"]) * len(valid["modes"])
            assert len(points) == len(valid["models"]) * per_model
            for point in points:
                # as RunPointOperator does: the build's folder on the board for the points that name a build
                command = runner_command("/board/venv/bin/python", point,
                                         armcl_build="/board/armcl/build" if point.get("armcl_build") else None)
                args = shlex.split(command)
                # the sweep's isolation fork: a child of the board's point server, with the same arguments
                module = "requestflow.board.point_client" if point.get("isolation") == "fork" else "requestflow.cli"
                assert args[:4] == ["/board/venv/bin/python", "-m", module, "run"]
                _runner_accepts(args[4:])


# What the runner may refuse in a point the form accepted: rules across fields that JSON Schema per Param cannot
# express, and what depends on the board (its CPUs). The point then fails at once, stored with that message.
RUNNER_RULES = ("runs fp32; to run dequantized",  # --precision uint8/int8 with a float backend (tf, armcl)
                "is not available here")  # --cpus naming CPUs the board (here: this machine) lacks


def _runner_accepts(args: list[str]) -> None:
    """The runner's own argument parsing and checks (``requestflow run`` up to loading weights) accept a planned
    point's command line, but for the rules of RUNNER_RULES."""
    from requestflow.board.runner import RunConfig, parse_cpus
    from requestflow.cli import build_parser

    try:
        parsed = build_parser().parse_args(["run", *args])
        cpus = parse_cpus(parsed.cpus) if parsed.cpus else None
        RunConfig(model=parsed.model, backend=parsed.backend, mode=parsed.mode, precision=parsed.precision,
                  release=parsed.release, batch_size=parsed.batch_size, threads=parsed.threads, cpus=cpus,
                  variant=parsed.variant, armcl_build=parsed.armcl_build, repetitions=parsed.repetitions,
                  warmup=parsed.warmup, limit=parsed.limit, weights=parsed.weights).validate()
        assert parsed.weights in (None, ["random"]), parsed.weights  # the sweep names no weights file
    except UserError as refused:
        assert any(rule in str(refused) for rule in RUNNER_RULES), f"the runner refuses {args}: {refused}"


def test_a_deeply_nested_value_in_an_error_message_is_shown_short_not_a_recursion_error():
    """Found by the mutation test above (CI of ba78c2d): a schema_version nested a thousand levels deep made the
    refusal's own message raise RecursionError (repr of the value). Messages show such values bounded."""
    from requestflow.results.document import check_document

    value = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(UserError, match=r"^doc\.json: unknown schema_version \[\[\[\[\.\.\.\]\]\]\] \(this"):
        check_document({"schema_version": value}, "doc.json")
    with pytest.raises(UserError, match=r"unknown schema_version 'xxx.*\.\.\..*x' \(this"):
        check_document({"schema_version": "x" * 10**6}, "doc.json")
