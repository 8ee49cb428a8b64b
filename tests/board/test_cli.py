"""The requestflow CLI: results on good input; one clear line, a non-zero exit and no file on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from requestflow.board.schema import validate_document

QUANT_128 = "mobilenet_v1_0.25_128_quant.tflite"


def assert_refused(result, out_file, pattern: str):
    import re

    code, stdout, stderr = result
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, stderr
    assert lines[0].startswith("requestflow: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in stderr + stdout
    assert not os.path.exists(out_file)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "result.json"


@pytest.fixture(scope="module")
def runner_document(models_dir) -> dict:
    from requestflow.board.runner import RunConfig, run

    return run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", repetitions=2, warmup=1, progress=False,
                         weights=[str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")]))


class TestBadInputIsRefused:
    def test_unknown_model_id_suggests_the_nearest(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-129", "--out", out), out,
                       r"unknown model id 'mobilenet-v1-0.25-129'; did you mean mobilenet-v1-0.25-128")

    def test_weights_of_the_wrong_shape(self, run_cli, out, models_dir):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.5-128", "--weights", models_dir / QUANT_128,
                               "--out", out), out,
                       r"layer conv0.weights has shape \(3, 3, 3, 8\), mobilenet-v1-0.5-128 needs \(3, 3, 3, 16\)")

    def test_a_local_weights_file_whose_sha256_does_not_match_the_registry(self, run_cli, out, data_dir, tmp_path,
                                                                           monkeypatch):
        fake = tmp_path / "data"
        (fake / "models").mkdir(parents=True)
        shutil.copy(data_dir / "README.md", fake / "README.md")
        tampered = bytearray((data_dir / "models" / QUANT_128).read_bytes())
        tampered[-1] ^= 0xFF
        (fake / "models" / QUANT_128).write_bytes(bytes(tampered))
        monkeypatch.setenv("REQUESTFLOW_DATA", str(fake))
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--offline", "--out", out), out,
                       r"sha256 mismatch for .*mobilenet_v1_0.25_128_quant.tflite: got [0-9a-f]{64}, "
                       r"registry says cb273c23")

    def test_a_missing_image_folder(self, run_cli, out, tmp_path):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--mode", "accuracy",
                               "--images", tmp_path / "no-such-folder", "--out", out), out,
                       r"image folder .*no-such-folder does not exist")

    def test_an_image_missing_from_val_txt(self, run_cli, out, val_dir, tmp_path):
        val_txt = tmp_path / "val.txt"
        lines = (val_dir.parent / "val.txt").read_text().splitlines()
        first = sorted(os.listdir(val_dir))[0]
        val_txt.write_text("\n".join(line for line in lines if not line.startswith(first)) + "\n")
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--mode", "accuracy", "--images", val_dir,
                               "--val-txt", val_txt, "--synset-words", val_dir.parent / "synset_words.txt",
                               "--out", out), out, f"image {first} is missing from .*val.txt")

    def test_limit_zero(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--mode", "accuracy", "--limit", "0",
                               "--out", out), out, r"--limit must be an integer >= 1, got 0")

    def test_negative_repetitions(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--repetitions", "-3", "--out", out), out,
                       r"--repetitions must be an integer >= 1, got -3")

    def test_a_non_numeric_option(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--batch-size", "two", "--out", out), out,
                       r"argument --batch-size: invalid int value: 'two'")

    def test_an_unknown_backend(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--backend", "onnx", "--out", out), out,
                       r"unknown backend 'onnx'; known: tf, tflite")

    def test_accuracy_with_random_weights(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--mode", "accuracy", "--weights", "random",
                               "--out", out), out, "accuracy needs real weights")

    def test_a_cpu_that_does_not_exist(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--cpus", "0,4096", "--out", out), out,
                       r"CPU 4096 is not available here")

    def test_an_output_folder_that_does_not_exist(self, run_cli, tmp_path):
        out = tmp_path / "missing" / "r.json"
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--out", out), out, "does not exist")

    def test_the_installed_command_prints_no_traceback(self, tmp_path):
        out = tmp_path / "r.json"
        result = subprocess.run([sys.executable, "-m", "requestflow.cli", "run", "--model", "nope", "--out", str(out)],
                                capture_output=True, text=True)
        assert_refused((result.returncode, result.stdout, result.stderr), out, "unknown model id 'nope'")


    def test_a_tensorflow_run_ends_at_once_with_its_output_and_exit_code(self, tmp_path):
        """The process skips TensorFlow's teardown (`cli._exit_now`): nothing it printed or wrote may be lost."""
        out = tmp_path / "r.json"
        result = subprocess.run([sys.executable, "-m", "requestflow.cli", "run", "--model", "mobilenet-v1-0.25-128",
                                 "--backend", "tf", "--weights", "random", "--repetitions", "2", "--warmup", "0",
                                 "--quiet", "--out", str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == f"result: {out}"
        assert "tf fp32 RANDOM weights performance: median" in result.stdout
        validate_document(json.loads(out.read_text()))

    def test_the_fast_exit_keeps_an_error_and_its_exit_code(self, tmp_path):
        code = ("import sys, tensorflow\nfrom requestflow import cli\n"
                f"sys.argv = ['requestflow', 'run', '--model', 'nope', '--out', {str(tmp_path / 'r.json')!r}]\n"
                "print('before', flush=False)\ncli.main()\nprint('after: the process went on')\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 2
        assert result.stdout == "before\n" and "unknown model id 'nope'" in result.stderr


class TestRuns:
    def test_performance_on_a_quantized_tflite_file(self, run_cli, out, models_dir):
        code, stdout, _ = run_cli("run", "--model", "mobilenet-v1-0.25-128", "--backend", "tflite", "--weights",
                                  models_dir / QUANT_128, "--repetitions", "7", "--warmup", "2", "--threads", "1",
                                  "--cpus", "0", "--quiet", "--out", out)
        assert code == 0, stdout
        document = json.loads(out.read_text())
        validate_document(document)
        performance, context = document["performance"], document["context"]
        assert len(performance["samples"]) == 7 and performance["warmup"] == 2
        assert performance["min"] <= performance["median"] <= performance["p90"] <= performance["max"]
        assert context["precision"] == "uint8" and context["threads"] == 1 and context["cpu_affinity"] == [0]
        for task in os.listdir("/proc/self/task"):  # every thread, the interpreter's included, is pinned
            assert os.sched_getaffinity(int(task)) == {0}
        assert context["weights"]["sha256"].startswith("cb273c23")
        assert context["weights"]["random"] is False
        assert "median" in stdout

    def test_performance_on_random_weights_is_labelled_random(self, run_cli, out):
        code, stdout, _ = run_cli("run", "--model", "mobilenet-v1-0.5-128", "--backend", "tflite", "--weights",
                                  "random", "--repetitions", "3", "--quiet", "--out", out)
        assert code == 0
        document = json.loads(out.read_text())
        validate_document(document)
        assert document["context"]["weights"]["random"] is True
        assert document["context"]["weights"]["format"] == "random"
        assert "RANDOM weights" in stdout
        assert "accuracy" not in document

    def test_without_shared_data_and_offline_performance_runs_on_labelled_random_weights(
            self, run_cli, out, tmp_path, monkeypatch, val_dir):
        monkeypatch.setenv("REQUESTFLOW_DATA", str(tmp_path / "absent"))
        code, stdout, stderr = run_cli("run", "--model", "mobilenet-v1-0.25-128", "--offline", "--repetitions", "2",
                                       "--quiet", "--out", out)
        assert code == 0
        assert "RANDOMLY INITIALISED" in stderr and "RANDOM weights" in stdout
        assert json.loads(out.read_text())["context"]["weights"]["random"] is True
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--offline", "--mode", "accuracy",
                               "--images", val_dir, "--out", tmp_path / "acc.json"), tmp_path / "acc.json",
                       r"no weights for mobilenet-v1-0.25-128 \(releases tried: .*downloads disabled")

    def test_accuracy_on_the_first_images_with_registry_weights(self, run_cli, out):
        code, stdout, _ = run_cli("run", "--model", "mobilenet-v1-0.25-160", "--mode", "accuracy", "--limit", "25",
                                  "--quiet", "--out", out)
        assert code == 0
        document = json.loads(out.read_text())
        validate_document(document)
        accuracy = document["accuracy"]
        assert accuracy["n"] == 25 and len(document["predictions"]) == 25
        assert document["context"]["weights"]["origin"] == "local"
        assert document["context"]["weights"]["release"] == "2018_08_02_quant"
        assert document["context"]["dataset"]["image_count"] == 25
        correct = sum(p["top5"][0][0] == p["label"] for p in document["predictions"])
        assert accuracy["top1"] == correct / 25

    def test_accuracy_in_batches_with_a_partial_last_batch_matches_batch_one(self, run_cli, tmp_path):
        predictions = {}
        for batch in (1, 4):
            out = tmp_path / f"b{batch}.json"
            code, _, _ = run_cli("run", "--model", "mobilenet-v1-0.25-224", "--backend", "tf", "--mode", "accuracy",
                                 "--limit", "10", "--batch-size", batch, "--quiet", "--out", out)
            assert code == 0
            document = json.loads(out.read_text())
            assert document["context"]["weights"]["release"] == "keras"
            predictions[batch] = [[c for c, _ in p["top5"]] for p in document["predictions"]]
        assert len(predictions[4]) == 10 and predictions[4] == predictions[1]

    def test_a_batch_size_a_fixed_shape_model_cannot_take_is_refused(self, run_cli, out):
        assert_refused(run_cli("run", "--model", "mobilenet-v1-0.25-128", "--batch-size", "4", "--quiet",
                               "--out", out), out, r"cannot run at batch size 4")

    def test_a_run_that_fails_while_running_writes_a_failed_document(self, run_cli, out, monkeypatch):
        from requestflow.board.backends import tflite_backend

        def broken(self):
            raise RuntimeError("the delegate fell over")

        monkeypatch.setattr(tflite_backend.TFLiteBackend, "invoke", broken)
        code, stdout, _ = run_cli("run", "--model", "mobilenet-v1-0.25-128", "--quiet", "--out", out)
        assert code == 1
        document = json.loads(out.read_text())
        validate_document(document)
        assert document["status"] == "failed"
        assert document["error"]["message"] == "the delegate fell over"
        assert "FAILED" in stdout


class TestOtherCommands:
    def test_models_lists_the_catalogue_and_local_weights(self, run_cli):
        code, stdout, _ = run_cli("models")
        assert code == 0
        assert stdout.count("mobilenet-v1-") == 16
        assert "mobilenet-v1-0.25-224       41.0" in stdout and "keras (local)" in stdout

    def test_models_as_json(self, run_cli):
        code, stdout, _ = run_cli("models", "--format", "json")
        rows = json.loads(stdout)["models"]
        assert [r["id"] for r in rows][:2] == ["mobilenet-v1-0.25-128", "mobilenet-v1-0.25-160"]

    def test_import_weights_writes_a_canonical_folder_that_runs(self, run_cli, models_dir, tmp_path, out):
        code, stdout, _ = run_cli("import-weights", models_dir / "mobilenet_v1_0.25_224.h5",
                                  "--model", "mobilenet-v1-0.25-224", "--out", tmp_path / "canon")
        assert code == 0 and "1000 classes" in stdout
        code, _, _ = run_cli("run", "--model", "mobilenet-v1-0.25-224", "--backend", "tflite", "--weights",
                             tmp_path / "canon", "--repetitions", "2", "--quiet", "--out", out)
        assert code == 0
        assert json.loads(out.read_text())["context"]["weights"]["format"] == "canonical"

    def test_validate_names_the_bad_field(self, run_cli, tmp_path):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"schema_version": 1, "status": "ok"}))
        code, stdout, _ = run_cli("validate", bad)
        assert code == 1 and "INVALID" in stdout and "requestflow_version" in stdout

    @pytest.mark.parametrize(("where", "value", "said"), [
        (("performance", "median"), float("nan"), "performance/median: nan is not a finite number"),
        (("context", "threads"), 2**40, "context/threads: 1099511627776 is too large for the store"),
        (("context", "model", "macs"), 2**64, "context/model/macs: 18446744073709551616 is too large"),
        (("performance", "n"), 2.0**31, "performance/n: 2147483648.0 is too large"),  # "integer" admits 2.0
        (("machine", "cpu_model"), "x86\x00", "machine/cpu_model: text with a NUL character"),
        (("started_at",), "yesterday", "started_at: 'yesterday' is not an ISO 8601 date-time"),
    ])
    def test_validate_refuses_what_the_store_would(self, run_cli, runner_document, tmp_path, where, value, said):
        """The loader's checks without a database: a file `validate` passes is one the store can hold."""
        good = tmp_path / "good.json"
        good.write_text(json.dumps(runner_document))
        assert run_cli("validate", good)[:2] == (0, f"{good}: valid\n")
        document = json.loads(good.read_text())
        node = document
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(document))
        code, stdout, _ = run_cli("validate", good, bad)
        assert code == 1
        assert stdout.startswith(f"{good}: valid\n{bad}: INVALID: field ") and said in stdout, stdout

    def test_validate_needs_no_database_library(self, tmp_path):
        """`requestflow validate` runs where only the board's packages are (a board, a laptop)."""
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        code = ("import sys\nfrom requestflow.cli import main\n"
                f"assert main(['validate', {str(bad)!r}]) == 1\n"
                "print('loaded:', ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('sqlalchemy', 'psycopg', 'airflow', 'fabric', 'alembic'))))\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip().splitlines()[-1] == "loaded:"
