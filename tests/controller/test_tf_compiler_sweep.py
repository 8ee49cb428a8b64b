"""TensorFlow's compiler as a sweep axis (issue #17): the form's ``tf_compilers`` and ``requestflow sweep
--tf-compilers`` give one tf point per compiler; the default compiler plans the points every sweep planned before
(no variant: the same identity, the same labels)."""

from __future__ import annotations

import jsonschema
import pytest

from operators.sweep import form, plan
from requestflow.board.catalogue import point_label
from tests.controller.test_sweep_plan import BOARDS, BUILDS, defaults


def tf_points(**overrides) -> list[dict]:
    return [p for p in plan("local", defaults(models=["mobilenet-v1-0.25-128"], backends=["tf", "armcl"],
                                              **overrides)) if p["backend"] == "tf"]


class TestTheAxis:
    def test_by_default_a_tf_point_has_no_variant_as_before(self):
        points = tf_points()
        assert len(points) == 2 and all("variant" not in p and "armcl_build" not in p for p in points)
        assert {point_label(p) for p in points} == {"mobilenet-v1-0.25-128 tf performance",
                                                    "mobilenet-v1-0.25-128 tf accuracy"}

    def test_two_compilers_give_two_points_per_model_and_mode(self):
        points = tf_points(tf_compilers=["graph", "xla"])
        assert len(points) == 4
        assert sorted(str(p.get("variant")) for p in points) == ["None", "None", "{'compiler': 'xla'}",
                                                                 "{'compiler': 'xla'}"]
        assert all("armcl_build" not in p for p in points)  # armcl's build is for armcl points only
        assert "mobilenet-v1-0.25-128 tf performance XLA" in {point_label(p) for p in points}
        assert len({point_label(p) for p in points}) == 4  # task names and job folders stay apart

    @pytest.mark.parametrize("value", [["tensorrt"], [], ["xla", "xla"]])
    def test_the_form_refuses_what_is_not_a_list_of_compilers(self, value):
        field = {k: v for k, v in form(None, BUILDS, BOARDS)["tf_compilers"].items()
                 if k not in ("default", "description")}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, field)


class TestTheCommand:
    @pytest.mark.parametrize("argv, message", [
        (["--backends", "tflite", "--tf-compilers", "xla"], "--tf-compilers chooses tf variants: add tf to --backends"),
        (["--backends", "tf", "--tf-compilers", "tensorrt"],
         "unknown TensorFlow compiler 'tensorrt'; known: graph, xla"),
    ])
    def test_bad_compilers_are_refused_before_anything_starts(self, run_cli, argv, message):
        code, _, stderr = run_cli("sweep", "--models", "mobilenet-v1-0.25-128", *argv)
        assert code == 2 and message in stderr
