"""The board side imports nothing from the controller's or the results store's worlds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BOARD = Path(__file__).resolve().parents[1] / "requestflow" / "board"
FORBIDDEN = ("airflow", "sqlalchemy", "fabric", "invoke", "paramiko", "alembic", "psycopg", "psycopg2")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_board_module_names_a_forbidden_package():
    offenders = {
        f"{path.relative_to(BOARD)}: {name}"
        for path in BOARD.rglob("*.py")
        for name in _imported_modules(path)
        if name.split(".")[0] in FORBIDDEN or (name.startswith("requestflow.") and
                                               not name.startswith(("requestflow.board", "requestflow.errors")))
    }
    assert offenders == set()


def test_importing_every_board_module_loads_no_forbidden_package():
    modules = sorted(
        "requestflow.board." + ".".join(path.relative_to(BOARD).with_suffix("").parts).replace(".__init__", "")
        for path in BOARD.rglob("*.py")
    )
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name.rstrip('.'))\n"
        "import requestflow.cli\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_checker_itself_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import sqlalchemy\nfrom airflow.sdk import dag\n")
    assert _imported_modules(sample) == {"sqlalchemy", "airflow.sdk"}


def test_the_wheel_lists_every_package_of_requestflow():
    """pyproject.toml names its packages (so that native/ can ship as requestflow.native): none may be forgotten."""
    import tomllib

    root = BOARD.parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for init in (root / "requestflow").rglob("__init__.py")}
    assert found | {"requestflow.native"} == listed
