"""The sweep's trigger form and plan as plain Python (``operators/sweep.py``): no Airflow imported, no DagBag built;
the form's fields checked with JSON Schema itself, the plan on hand-written params."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from operators.sweep import MODEL_IDS, form, plan, refusal

ROOT = Path(__file__).resolve().parents[2]
BUILDS = ["armcl_a", "armcl_b"]
BOARDS = ["local", "rfb1"]


def defaults(**overrides) -> dict:
    return {name: field["default"] for name, field in form(overrides or None, BUILDS, BOARDS).items()}


def schema(name: str) -> dict:
    field = form(None, BUILDS, BOARDS)[name]
    return {k: v for k, v in field.items() if k not in ("default", "description")}


class TestTheForm:
    def test_importing_the_form_and_the_plan_imports_no_airflow(self):
        code = ("import sys, operators.sweep; "
                "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"

    def test_every_default_is_valid_against_its_own_field(self):
        for name, field in form(None, BUILDS, BOARDS).items():
            jsonschema.validate(field["default"], schema(name))

    def test_the_defaults_are_all_sixteen_models_on_the_first_build(self):
        d = defaults()
        assert d["models"] == MODEL_IDS and len(MODEL_IDS) == 16
        assert d["armcl_build"] == ["armcl_a"] and d["boards"] == ["local"]

    def test_overrides_replace_defaults_and_boards_the_inventory_lacks_are_dropped(self):
        d = defaults(boards=["hikey", "rfb1"], repetitions=7)
        assert d["boards"] == ["rfb1"] and d["repetitions"] == 7
        assert defaults(boards=["hikey"])["boards"] == ["local"]  # none left: the inventory's first

    @pytest.mark.parametrize("name, value", [("boards", ["hikey"]), ("boards", []), ("armcl_build", "armcl_c"),
                                             ("armcl_build", ["armcl_a", "armcl_c"]),
                                             ("armcl_build", ["armcl_a", "armcl_a"]),
                                             ("repetitions", 0), ("cpus", "0-3; rm -rf /"), ("weights", None)])
    def test_a_bad_value_is_refused_by_the_fields_schema(self, name, value):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema(name))

    def test_without_builds_the_armcl_build_can_only_be_empty(self):
        field = form(None, [], BOARDS)["armcl_build"]
        rules = {k: v for k, v in field.items() if k not in ("default", "description")}
        assert field["default"] is None
        jsonschema.validate(None, rules)
        for value in ("armcl_a", ["armcl_a"]):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(value, rules)

    def test_several_armcl_builds_or_one_name_as_before(self):
        for value in (["armcl_a", "armcl_b"], ["armcl_b"], "armcl_b", None):
            jsonschema.validate(value, schema("armcl_build"))


class TestThePlan:
    def test_a_board_not_chosen_has_no_points(self):
        assert plan("rfb1", defaults()) == []

    def test_the_default_plan_is_every_model_in_both_modes(self):
        points = plan("local", defaults())
        assert len(points) == 32
        perf = next(p for p in points if p["mode"] == "performance")
        acc = next(p for p in points if p["mode"] == "accuracy")
        assert (perf["repetitions"], perf["warmup"], "limit" in perf) == (20, 3, False)
        assert (acc["limit"], "repetitions" in acc) == (500, False)

    def test_whole_numbers_given_as_floats_reach_the_runner_as_integers(self):
        [point] = plan("local", defaults(models=MODEL_IDS[:1], modes=["performance"], repetitions=5.0, threads=2.0))
        assert point["repetitions"] == 5 and isinstance(point["repetitions"], int)
        assert point["threads"] == 2 and isinstance(point["threads"], int)

    def test_one_armcl_point_per_build_per_variant_and_none_for_the_other_backends(self):
        points = plan("local", defaults(models=MODEL_IDS[:1], backends=["armcl", "tf"], modes=["accuracy"],
                                        armcl_build=["armcl_b", "armcl_a"], armcl_layouts=["NHWC", "NCHW"]))
        armcl = [(p["armcl_build"], p["variant"]["layout"]) for p in points if p["backend"] == "armcl"]
        assert sorted(armcl) == [("armcl_a", "NCHW"), ("armcl_a", "NHWC"), ("armcl_b", "NCHW"), ("armcl_b", "NHWC")]
        assert [p.get("armcl_build") for p in points if p["backend"] == "tf"] == [None]
        # one name, as the field was before issue #17, is one build
        [one] = plan("local", defaults(models=MODEL_IDS[:1], backends=["armcl"], modes=["accuracy"],
                                       armcl_build="armcl_b"))
        assert one["armcl_build"] == "armcl_b"

    def test_armcl_points_without_a_build_are_refused(self):
        p = defaults(backends=["armcl"], armcl_build=None)
        with pytest.raises(ValueError, match="armcl points need an ArmCL build"):
            plan("local", p)
        assert refusal(p) == ("the sweep's params are refused: armcl points need an ArmCL build: choose one "
                              "(config/armcl.json)")

    def test_a_cool_down_that_is_not_a_number_is_refused(self):
        with pytest.raises(ValueError, match="cooldown_c must be a finite temperature, not nan"):
            plan("local", defaults(cooldown_c=float("nan")))

    def test_random_weights_with_accuracy_points_are_refused_naming_at_most_five(self):
        with pytest.raises(ValueError, match=r"16 accuracy point\(s\) cannot run \([^()]*accuracy and 11 more\)"):
            plan("local", defaults(weights="random"))
        assert refusal(defaults()) is None

    def test_the_cluster_all_is_no_cluster_on_the_points(self):
        assert all("cluster" not in p for p in plan("local", defaults()))
        assert {p["cluster"] for p in plan("local", defaults(cluster="big"))} == {"big"}


class TestTheIsolation:
    """The sweep's ``isolation`` (issue #20, ADR 0009): empty leaves each board's; fresh or fork goes on every
    point and picks the runner's module; not an argument of the runner (recorded by it, not part of identity)."""

    def test_empty_by_default_so_each_board_keeps_its_own(self):
        assert defaults()["isolation"] is None
        jsonschema.validate(None, schema("isolation"))
        assert all("isolation" not in p for p in plan("local", defaults()))

    def test_fork_goes_on_every_point_and_runs_the_point_client(self):
        from operators.point_steps import runner_command

        points = plan("local", defaults(models=MODEL_IDS[:1], isolation="fork"))
        assert [p["isolation"] for p in points] == ["fork", "fork"]
        command = runner_command("python3", points[0])
        assert command.startswith("python3 -m requestflow.board.point_client run ") and "isolation" not in command
        # the point's choice over the board's, either way; --identify (resume) stays a fresh process
        assert "-m requestflow.cli run" in runner_command("python3", {**points[0], "isolation": "fresh"},
                                                          isolation="fork")
        assert "-m requestflow.cli run" in runner_command("python3", points[0], out=None)

    def test_anything_else_is_refused_by_the_form_and_the_plan(self):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate("thread", schema("isolation"))
        with pytest.raises(ValueError, match="isolation must be fresh or fork .*not 'thread'"):
            plan("local", defaults(isolation="thread"))

    def test_requestflow_sweep_takes_it(self):
        from requestflow.cli import build_parser
        from requestflow.errors import UserError

        parser = build_parser()
        assert parser.parse_args(["sweep", "--models", MODEL_IDS[0], "--isolation", "fork"]).isolation == "fork"
        assert parser.parse_args(["sweep", "--models", MODEL_IDS[0]]).isolation is None
        with pytest.raises(UserError, match="--isolation: invalid choice: 'thread'"):
            parser.parse_args(["sweep", "--models", MODEL_IDS[0], "--isolation", "thread"])
