"""Runtime specs as a sweep axis (issue #17, operators/runtime_spec.py): what a spec may be, how the form and the
plan multiply points by it, how `requestflow sweep` refuses a bad one, what the board keeps, what a point's identity
makes of it, and how a version the package index cannot provide is named at provisioning. The real sweep on two
LiteRT versions is tests/integration/test_runtime_sweep.py."""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from operators import runtime_spec
from operators.blob_store import DeployError
from operators.board_gc import collect_garbage
from operators.board_hook import LocalBoard
from operators.bundle import Bundle
from operators.point_steps import job_dir, runner_command
from operators.runtime_spec import RUNTIME_PACKAGES, SpecError, check_target, parse, runtime_bundle
from operators.sweep import defaults, form, plan, refusal
from requestflow.board.catalogue import point_label
from requestflow.board.files import sha256_file
from requestflow.errors import UserError
from requestflow.results.identity import library_build, point_id

MODEL = "mobilenet-v1-0.25-128"
A, B = "ai-edge-litert==1.4.0", "ai-edge-litert==2.3.0"


def params(**changes) -> dict:
    p = defaults(None, [], ["local"])
    p.update(models=[MODEL], backends=["tflite", "tf"], modes=["performance", "accuracy"])
    p.update(changes)
    return p


class TestASpec:
    def test_is_one_exact_pin_of_a_known_runtime_spelled_canonically(self):
        spec = parse(" ai_edge_litert == 1.4.0 ")
        assert (spec.text, spec.backend, spec.link) == (A, "tflite", f"runtime-{spec.digest}")
        assert parse("TensorFlow-CPU==2.20.0").text == "tensorflow-cpu==2.20.0" and parse("tensorflow==2.20.0")
        assert set(RUNTIME_PACKAGES.values()) == {"tflite", "tf"}
        assert parse(A).digest == parse("ai_edge_litert==1.4.0").digest != parse(B).digest

    @pytest.mark.parametrize("text, message", [
        ("ai-edge-litert>=1.4", r"'ai-edge-litert>=1.4' is not NAME==VERSION \(an exact release"),
        ("ai-edge-litert==2.3.0rc1", r"is not NAME==VERSION"),
        ("ai-edge-litert", r"is not NAME==VERSION"),
        ("ai-edge-litert==1.4.0; rm -rf /", r"is not NAME==VERSION"),
        ("numpy==2.4.6", r"numpy is not a runtime requestflow knows; one of ai-edge-litert, tensorflow-cpu"),
    ])
    def test_anything_else_is_refused_in_one_line(self, text, message):
        with pytest.raises(SpecError, match=message) as caught:
            parse(text)
        assert "\n" not in str(caught.value) and isinstance(caught.value, UserError)

    def test_the_boards_own_requirements_decide_what_it_can_run(self):
        check_target(parse(A), "x86_64", "3.11")
        check_target(parse("ai-edge-litert==2.2.0"), "x86_64", "3.11")
        check_target(parse("tensorflow-cpu==2.20.0"), "x86_64", "3.11")
        with pytest.raises(UserError, match=r"tensorflow-cpu==2.19.0: requestflow requires tensorflow-cpu<2.22,>=2.20 "
                                            r"on x86_64 boards"):
            check_target(parse("tensorflow-cpu==2.19.0"), "x86_64", "3.11")
        with pytest.raises(UserError, match=r"runtime spec ai-edge-litert==2.3.0: requestflow requires "
                                            r"ai-edge-litert==1.4.0 on aarch64 boards \(pyproject.toml\)"):
            check_target(parse(B), "aarch64", "3.11")
        with pytest.raises(UserError, match=r"does not use tensorflow-cpu on aarch64 boards \(it uses tensorflow\)"):
            check_target(parse("tensorflow-cpu==2.20.0"), "aarch64", "3.11")


class TestTheSweep:
    def test_the_form_offers_both_axes_empty_by_default(self):
        fields = form(None, [], ["local"])
        for name in ("litert_specs", "tf_specs"):
            assert fields[name]["default"] == [] and fields[name]["items"]["pattern"]
            assert re.match(fields[name]["items"]["pattern"], "ai-edge-litert==1.4.0")
            assert not re.match(fields[name]["items"]["pattern"], "ai-edge-litert>=1.4")

    def test_each_tflite_point_is_planned_once_per_spec_and_the_others_once(self):
        points = plan("local", params(litert_specs=[A, "ai_edge_litert==2.3.0"]))
        tflite = [p for p in points if p["backend"] == "tflite"]
        assert sorted((p["mode"], p["runtime"]) for p in tflite) == [
            ("accuracy", A), ("accuracy", B), ("performance", A), ("performance", B)]
        assert [p for p in points if p["backend"] == "tf" and "runtime" in p] == []
        labels = [point_label(p) for p in points]
        assert len(set(labels)) == len(labels) == 6 and f"{MODEL} tflite performance {A}" in labels
        # each point has its own job folder on the board; the runner is never given the spec (its venv has it)
        assert len({job_dir("/w", "sweep", label) for label in labels}) == 6
        command = runner_command("python3", tflite[0])
        assert "runtime" not in command and "litert" not in command, command

    def test_without_specs_the_points_are_what_they_always_were(self):
        assert all("runtime" not in p for p in plan("local", params()))

    @pytest.mark.parametrize("changes, message", [
        ({"litert_specs": ["numpy==2.4.6"]}, "numpy is not a runtime requestflow knows"),
        ({"litert_specs": ["tensorflow-cpu==2.20.0"]}, "tensorflow-cpu==2.20.0 is for tf points, not tflite"),
        ({"litert_specs": [A, "ai_edge_litert==1.4.0"]}, "ai-edge-litert==1.4.0 is given twice"),
        ({"backends": ["tf"], "litert_specs": [A]}, "litert_specs chooses the runtimes of tflite points: add tflite"),
    ])
    def test_bad_specs_are_refused_by_the_plan_in_one_line(self, changes, message):
        p = params(**changes)
        with pytest.raises(ValueError, match=re.escape(message)):
            plan("local", p)
        assert refusal(p).startswith("the sweep's params are refused: ") and "\n" not in refusal(p)


class TestTheCommand:
    @pytest.mark.parametrize("argv, message", [
        (["--litert-specs", "ai-edge-litert>=1.4"], r"runtime spec 'ai-edge-litert>=1.4' is not NAME==VERSION"),
        (["--litert-specs", "numpy==1.0"], r"numpy is not a runtime requestflow knows"),
        (["--tf-specs", A], r"ai-edge-litert==1.4.0 is for tflite points, not tf"),
        (["--backends", "tf", "--litert-specs", A], r"--litert-specs chooses the runtimes of tflite points: add "
                                                     r"tflite to --backends"),
    ])
    def test_a_bad_spec_is_one_line_and_exit_2_before_anything_starts(self, run_cli, argv, message):
        if "--backends" not in argv:
            argv = ["--backends", "tflite", "tf", *argv]
        code, out, err = run_cli("sweep", "--models", MODEL, *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and out == "" and len(lines) == 1, err
        assert lines[0].startswith("requestflow: error: ") and re.search(message, lines[0]), lines[0]


    def test_good_specs_become_the_forms_fields_spelled_canonically(self):
        from argparse import Namespace

        from operators.commands import runtime_specs

        args = Namespace(litert_specs=["ai_edge_litert==1.4.0,ai-edge-litert==2.3.0"], tf_specs=None)
        assert runtime_specs(args, ["tflite"]) == {"litert_specs": [A, B]}
        assert runtime_specs(args, None) == {"litert_specs": [A, B]}  # the DAG's default backends decide
        assert runtime_specs(Namespace(litert_specs=None, tf_specs=None), ["tf"]) == {}


class TestTheIdentity:
    BACKEND = {"name": "tflite", "library": "ai_edge_litert", "version": "1.4.0", "variant": {}, "threads": 2}
    CONTEXT = {"backend": BACKEND, "model": {"id": MODEL}, "precision": "uint8", "mode": "performance",
               "weights": {"sha256": "ab" * 32}, "dataset": {"synthetic": True}, "batch_size": 1, "threads": 2,
               "cpu_affinity": [0, 1], "preprocessing": {}}

    def test_a_point_without_a_spec_keeps_its_identity(self):
        assert library_build(self.BACKEND) == {"name": "tflite", "library": "ai_edge_litert", "version": "1.4.0",
                                               "build": None}
        # computed with the identity of HEAD before runtime specs (identity version 1)
        assert point_id("b", self.CONTEXT) == "58e96ec603814324d97d7748b27e5969f581ca0579da4877e148d17bcc08c67d"

    def test_the_spec_is_part_of_the_library_build_and_so_of_the_point(self):
        specced = {**self.CONTEXT, "backend": {**self.BACKEND, "runtime": A}}
        assert library_build(specced["backend"])["runtime"] == A
        assert point_id("b", specced) != point_id("b", self.CONTEXT)


class TestTheBoard:
    def test_its_clean_up_keeps_the_runner_of_every_runtime(self, tmp_path):
        runners = tmp_path / "work" / "runner"
        for age_days, digest in enumerate(["c0", "spec", "old"]):  # newest first
            (runners / digest / "venv").mkdir(parents=True)
            (runners / digest / ".deployed").touch()
            when = time.time() - (1 + age_days) * 86400
            os.utime(runners / digest / ".deployed", (when, when))
        (runners / "current").symlink_to("c0")
        (runners / "runtime-0123456789abcdef").symlink_to("spec")
        garbage = collect_garbage(LocalBoard(work_dir=str(tmp_path / "work")), keep_runners=1, keep_days=1,
                                  log=lambda _: None)
        assert [path for path, _ in garbage.removed["runner"]] == ["runner/old"]
        assert (runners / "spec" / "venv").is_dir() and (runners / "c0" / "venv").is_dir()


class TestProvisioning:
    def test_a_version_the_package_index_cannot_provide_is_named(self, tmp_path):
        """A real pip download (the package index, as a bundle build uses it) of a release that does not exist."""
        base = Bundle(path=tmp_path, digest="0" * 16, wheels=[], python="3.11", python_tag="cp311",
                      platform="x86_64", project_wheel="requestflow-0.1.0-py3-none-any.whl", version="0.1.0",
                      sha256={})
        with pytest.raises(DeployError) as caught:
            runtime_bundle(base, parse("ai-edge-litert==1.4.99"), tmp_path / "runtimes", log=lambda _: None)
        message = str(caught.value)
        assert message.startswith("runtime ai-edge-litert==1.4.99: the package index cannot provide it for x86_64 / "
                                  "Python 3.11: ") and "\n" not in message, message
        assert [p.name for p in (tmp_path / "runtimes").iterdir() if not p.name.startswith(".")] == []

    def test_a_spec_requestflow_excludes_on_the_board_is_refused_before_any_download(self, tmp_path):
        base = Bundle(path=tmp_path, digest="0" * 16, wheels=[], python="3.11", python_tag="cp311",
                      platform="aarch64", project_wheel="requestflow-0.1.0-py3-none-any.whl", version="0.1.0",
                      sha256={})
        with pytest.raises(UserError, match="requires ai-edge-litert==1.4.0 on aarch64 boards"):
            runtime_bundle(base, parse(B), tmp_path / "runtimes", log=lambda _: None)
        assert not (tmp_path / "runtimes").exists() or not list((tmp_path / "runtimes").glob("[!.]*"))


class TestTheWheelhouse:
    """``runtime_bundle`` with pip replaced by a stand-in that saves given wheels (offline, instant)."""

    LITERT = "ai_edge_litert-{}-cp311-cp311-manylinux_2_27_x86_64.whl"
    NUMPY = "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl"

    @pytest.fixture
    def base(self, tmp_path):
        folder = tmp_path / "bundle"
        folder.mkdir()
        for name in (self.LITERT.format("2.3.0"), self.NUMPY, "requestflow-0.1.0-py3-none-any.whl"):
            (folder / name).write_bytes(name.encode())
        wheels = sorted(folder.iterdir())
        return Bundle(path=folder, digest="b" * 16, wheels=wheels, python="3.11", python_tag="cp311",
                      platform="x86_64", project_wheel="requestflow-0.1.0-py3-none-any.whl", version="0.1.0",
                      sha256={w.name: sha256_file(w) for w in wheels})

    @pytest.fixture
    def pip_saves(self, monkeypatch):
        calls = []

        def run_pip(args, log):
            calls.append(args)
            dest = Path(args[args.index("--dest") + 1])
            dest.mkdir(parents=True, exist_ok=True)
            version = args[-1].split("==")[1]
            for name in (self.LITERT.format(version), self.NUMPY):  # numpy: the same file as the bundle's
                (dest / name).write_bytes(name.encode())

        monkeypatch.setattr(runtime_spec, "run_pip", run_pip)
        return calls

    def test_the_spec_replaces_the_bundles_version_and_only_its_wheel_is_kept(self, base, pip_saves, tmp_path):
        made = runtime_bundle(base, parse(A), tmp_path / "runtimes", log=lambda _: None)
        names = sorted(w.name for w in made.wheels)
        assert names == sorted([self.LITERT.format("1.4.0"), self.NUMPY, "requestflow-0.1.0-py3-none-any.whl"])
        assert (made.runtime, made.link, made.version) == (A, parse(A).link, "0.1.0")
        assert [p.name for p in made.path.iterdir()] == sorted([self.LITERT.format("1.4.0"), "runtime.json"])
        assert made.digest != base.digest and set(made.sha256) == set(names)
        constraints = Path(pip_saves[0][pip_saves[0].index("--constraint") + 1])
        assert pip_saves[0][-1] == A and "--platform" not in pip_saves[0]
        assert runtime_bundle(base, parse(A), tmp_path / "runtimes", log=lambda _: None) == made
        assert len(pip_saves) == 1 and not constraints.exists()  # cached by its key: pip once

    def test_a_spec_of_the_bundles_own_version_is_the_bundles_wheels(self, base, pip_saves, tmp_path):
        made = runtime_bundle(base, parse(B), tmp_path / "runtimes", log=lambda _: None)
        assert sorted(w.name for w in made.wheels) == sorted(w.name for w in base.wheels)
        assert made.runtime == B and made.digest not in (base.digest,)
        assert made.digest != runtime_bundle(base, parse(A), tmp_path / "runtimes", log=lambda _: None).digest

    def test_its_venv_follows_the_spec_and_the_pins_not_the_projects_sources(self, base, pip_saves, tmp_path):
        made = runtime_bundle(base, parse(A), tmp_path / "runtimes", log=lambda _: None)
        project = base.path / base.project_wheel
        project.write_bytes(b"requestflow, edited")  # a new project wheel: the same venv, updated in place
        edited = runtime_bundle(replace(base, sha256={**base.sha256, project.name: sha256_file(project)}),
                                parse(A), tmp_path / "runtimes", log=lambda _: None)
        assert edited.digest == made.digest and edited.sha256[project.name] != made.sha256[project.name]
        numpy = base.path / self.NUMPY
        numpy.write_bytes(b"another numpy")  # another dependency: another venv
        assert runtime_bundle(replace(base, sha256={**base.sha256, numpy.name: sha256_file(numpy)}), parse(A),
                              tmp_path / "runtimes", log=lambda _: None).digest != made.digest
