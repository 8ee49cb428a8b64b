"""The local board's commands run without the controller's PYTHONPATH when its Python does not need it
(``operators.board_hook.local_board_env``): a runner venv on the local board then gets and imports a requestflow of
its own, as on any board (the full trial of b371846 found its venv without one: pip saw the checkout's through the
PYTHONPATH the local Airflow sets)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import requestflow
from operators import board_hook
from operators.board_hook import LocalBoard

ROOT = Path(__file__).resolve().parents[2]


def test_the_local_boards_commands_do_not_see_the_controllers_pythonpath(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{tmp_path}")
    monkeypatch.setenv("REQUESTFLOW_STATE", str(tmp_path / "state"))
    result = LocalBoard().run('echo "pythonpath=${PYTHONPATH:-unset} state=$REQUESTFLOW_STATE"')
    assert result.stdout.split() == ["pythonpath=unset", f"state={tmp_path / 'state'}"]  # the rest kept


def test_a_venv_made_by_the_local_board_imports_its_own_requestflow_not_the_checkouts(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    venv = tmp_path / "venv"
    board = LocalBoard()
    board.run(f"{sys.executable} -m venv --without-pip {venv}")
    found = board.run(f"cd {tmp_path} && {venv}/bin/python -c 'import requestflow' 2>&1 || echo refused",
                      warn=True).stdout
    assert "refused" in found and "No module named 'requestflow'" in found  # the checkout is not on its path


def test_the_pythonpath_is_kept_for_a_python_that_needs_it():
    python = shutil.which("python3", path="/usr/bin")
    if python is None:
        pytest.skip("no /usr/bin/python3 to stand for a Python without requestflow installed")
    assert board_hook._finds_itself_without_pythonpath(python, requestflow.__file__) is False
    assert board_hook._finds_itself_without_pythonpath(sys.executable, requestflow.__file__) is True
