"""A board's work dir cleaned (operators.board_gc): old runners, long-finished job folders and unlinked blobs go;
the current runner, running jobs, data and everything recent stay. On a real sshd board and on the local board."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from operators.board_gc import collect_garbage, script
from operators.board_hook import BoardHook, LocalBoard
from operators.board_settings import BoardSettings
from requestflow.errors import UserError
from tests.farm import farm_fixture

farm = farm_fixture(1, scope="module")
DAY = 86400


def age(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when), follow_symlinks=False)


def work_dir_with_history(work: Path) -> dict[str, Path]:
    """Four deployed runners (r1 oldest .. r4 newest, r3 current), a deploy that never finished two days ago and
    one in progress; job folders finished 40 and 2 days ago, one still running for 40 days; blobs linked from
    data and wheels, one unlinked and old, one unlinked and just sent."""
    paths: dict[str, Path] = {}
    for index, digest in enumerate(["r1", "r2", "r3", "r4"]):
        folder = work / "runner" / digest
        (folder / "venv").mkdir(parents=True)
        (folder / "venv" / "big").write_bytes(b"x" * 300_000)
        (folder / ".deployed").touch()
        age(folder / ".deployed", 10 - index)
        paths[digest] = folder
    (work / "runner" / "current").symlink_to("r3")
    for name, days in (("half-old", 2), ("half-new", 0)):
        (work / "runner" / name / "wheels").mkdir(parents=True)
        age(work / "runner" / name, days)
        paths[name] = work / "runner" / name
    for name, days, ended in (("runs/sweep_a_old", 40, True), ("runs/sweep_b_recent", 2, True),
                              ("runs/sweep_c_running", 40, False), ("replays/20260101T000000-000001", 40, True),
                              ("armcl/jobs/build-old", 40, True)):
        folder = work / name
        folder.mkdir(parents=True)
        (folder / "result.json").write_text("{}")
        if ended:
            (folder / "exit_code").write_text("0\n")
            age(folder / "exit_code", days)
        paths[name] = folder
    blobs = work / "blobs"
    (blobs / ".incoming").mkdir(parents=True)
    (blobs / ".incoming" / "partial").write_bytes(b"p")
    age(blobs / ".incoming" / "partial", 5)
    for name in ("linked-data", "linked-wheel", "unlinked-old", "unlinked-new"):
        (blobs / name).write_bytes(name.encode() * 1000)
        paths[name] = blobs / name
    (work / "data").mkdir()
    os.link(blobs / "linked-data", work / "data" / "weights.tflite")
    os.link(blobs / "linked-wheel", paths["r3"] / "wheel.whl")
    for name in ("linked-data", "linked-wheel", "unlinked-old"):
        age(blobs / name, 5)
    return paths


GONE = {"r1", "r2", "half-old", "runs/sweep_a_old", "replays/20260101T000000-000001", "armcl/jobs/build-old",
        "unlinked-old"}


def check(work: Path, paths: dict[str, Path], garbage, removed: bool) -> None:
    listed = {Path(p) for kind in ("runner", "job", "blob") for p, _ in garbage.removed[kind]}
    assert listed == {paths[name].relative_to(work) for name in GONE}
    assert {p for p, _ in garbage.removed["runner"]} == {"runner/r1", "runner/r2", "runner/half-old"}
    assert garbage.kib("runner") >= 2 * 290  # two 300 kB venvs
    for name, path in paths.items():
        assert path.exists() == (name not in GONE or not removed), name
    assert (work / "runner" / "current").resolve() == paths["r3"]
    assert (work / "data" / "weights.tflite").read_bytes() == b"linked-data" * 1000
    assert (work / "blobs" / ".incoming" / "partial").exists()


@pytest.fixture
def farm_board(farm):
    b = farm.boards[0]
    hook = BoardHook(settings=BoardSettings(name=b.name, host=b.host, key_file=str(b.key_file),
                                            host_key=b.host_public_key, work_dir=str(b.work_dir)))
    yield hook, b.work_dir
    hook.close()


def test_a_dry_run_lists_and_removes_nothing_then_the_clean_up_removes_exactly_that(farm_board):
    board, work = farm_board
    paths = work_dir_with_history(work)
    lines: list[str] = []
    dry = collect_garbage(board, keep_runners=2, keep_days=30, dry_run=True, log=lines.append)
    check(work, paths, dry, removed=False)
    assert lines[0].startswith(f"board {board.settings.name}: would remove 3 runner folder(s), 3 job folder(s), "
                               "1 blob(s): ")
    done = collect_garbage(board, keep_runners=2, keep_days=30, log=lines.append)
    assert done.removed == dry.removed
    check(work, paths, done, removed=True)
    again = collect_garbage(board, keep_runners=2, keep_days=30, log=lines.append)
    assert again.kib() == 0 and lines[-1].endswith("removed 0 runner folder(s), 0 job folder(s), 0 blob(s): 0 KiB")


def test_keeping_one_runner_keeps_only_the_current_one(tmp_path):
    work = tmp_path / "work"
    paths = work_dir_with_history(work)
    garbage = collect_garbage(LocalBoard(work_dir=str(work)), keep_runners=1, keep_days=1, log=lambda line: None)
    assert {p for p, _ in garbage.removed["runner"]} == {"runner/r1", "runner/r2", "runner/r4", "runner/half-old"}
    assert paths["r3"].exists() and not paths["r4"].exists()
    assert not paths["runs/sweep_b_recent"].exists()  # finished 2 days ago, kept 1 day
    assert paths["runs/sweep_c_running"].exists()  # no exit code: still running


def test_a_board_without_a_work_dir_has_nothing_to_clean(tmp_path):
    garbage = collect_garbage(LocalBoard(work_dir=str(tmp_path / "never-provisioned")), log=lambda line: None)
    assert garbage.kib() == 0


def test_bad_limits_are_refused(tmp_path, run_cli):
    with pytest.raises(ValueError, match="keep_runners must be at least 1"):
        script(str(tmp_path), 0, 30, False)
    code, _, stderr = run_cli("board-gc", "local", "--keep-runners", "0")
    assert code == 2 and "--keep-runners must be at least 1" in stderr
    code, _, stderr = run_cli("board-gc", "local", "--keep-days", "-1")
    assert code == 2 and "--keep-days must be >= 0" in stderr


@pytest.mark.parametrize(("extras", "said"), [
    ({"gc_keep_runners": 0}, "'gc_keep_runners' must be a whole number >= 1, got 0"),
    ({"gc_keep_runners": "2.5"}, "must be a whole number >= 1, got '2.5'"),
    ({"gc_keep_days": "soon"}, "'gc_keep_days' must be a number"),
])
def test_the_connection_extras_are_checked(extras, said):
    class Conn:
        host, login, port, password = "10.0.0.2", "root", 22, None
        extra_dejson = {"key_file": "/k", "no_host_key_check": True, **extras}

    with pytest.raises(UserError, match=said.replace("(", r"\(").replace(")", r"\)")):
        BoardSettings.from_connection("b1", Conn())


def test_the_connection_extras_set_the_limits():
    class Conn:
        host, login, port, password = "10.0.0.2", "root", 22, None
        extra_dejson = {"key_file": "/k", "no_host_key_check": True, "gc_keep_runners": "3", "gc_keep_days": 7}

    settings = BoardSettings.from_connection("b1", Conn())
    assert (settings.gc_keep_runners, settings.gc_keep_days) == (3, 7.0)


def test_the_cli_cleans_the_local_board(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path))
    work = Path(LocalBoard().settings.work_dir).expanduser()
    paths = work_dir_with_history(work)
    code, stdout, _ = run_cli("board-gc", "local", "--dry-run")
    assert code == 0 and "board local: would remove 3 runner folder(s), 3 job folder(s), 1 blob(s)" in stdout
    assert "  runs/sweep_a_old\n" in stdout and all(path.exists() for path in paths.values())
    code, stdout, _ = run_cli("board-gc", "local")
    assert code == 0 and "board local: removed 3 runner folder(s)" in stdout
    assert not paths["r1"].exists() and paths["r3"].exists()
