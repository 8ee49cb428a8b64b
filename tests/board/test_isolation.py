"""The board side imports nothing from the controller's or the results store's worlds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BOARD = Path(__file__).resolve().parents[2] / "requestflow" / "board"
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


# --- the layers (ADR 0007): imports point one way, and no cycle --------------------------------------------------


def test_every_import_points_down_the_layers():
    """dags -> operators / plugins -> requestflow.cli / requestflow.results -> requestflow.board -> the base;
    an import inside a function counts like any other (``python -m tests.import_graph`` prints the graph)."""
    from tests.import_graph import graph, upward_arrows

    assert upward_arrows(graph()) == []


def test_no_module_takes_part_in_an_import_cycle():
    from tests.import_graph import cycles, graph

    assert cycles(graph()) == []


def test_the_graph_sees_imports_inside_functions_and_reports_arrows_and_cycles(tmp_path, monkeypatch):
    from tests import import_graph

    for path, text in {"requestflow/__init__.py": "", "requestflow/board/__init__.py": "",
                       "requestflow/board/a.py": "def f():\n    from operators import b\n",
                       "operators/__init__.py": "", "operators/b.py": "from requestflow.board.a import f\n",
                       "dags/__init__.py": "", "plugins/__init__.py": ""}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.setattr(import_graph, "ROOT", tmp_path)
    edges = import_graph.graph()
    assert edges["requestflow.board.a"] == {"operators", "operators.b"}  # the package's __init__ runs too
    assert import_graph.upward_arrows(edges) == [("requestflow.board.a", "operators"),
                                                 ("requestflow.board.a", "operators.b")]
    assert import_graph.cycles(edges) == [["operators.b", "requestflow.board.a"]]


def test_no_source_module_is_over_400_lines():
    """One job per module (issue #16): a longer module is split along its seams (bench/ and native/ are not sources;
    ``python -m tests.import_graph`` lists the longest)."""
    from tests.import_graph import MAX_LINES, largest_modules

    assert [(lines, name) for lines, name in largest_modules() if lines > MAX_LINES] == []


def test_every_operators_execute_is_thin():
    """Thin operators over small services (issue #16): an ``execute`` longer than this does the service's work."""
    from tests.import_graph import MAX_EXECUTE_LINES, operator_executes

    executes = operator_executes()
    assert executes, "no operator found: the checker reads the wrong tree"
    assert [(lines, name) for lines, name in executes if lines > MAX_EXECUTE_LINES] == []


def test_no_two_source_modules_share_a_file_name():
    from tests.import_graph import shared_file_names

    assert shared_file_names() == {}


def test_no_private_name_is_imported_from_another_module():
    """A name another module needs is public: ``from a import _b`` across modules means a seam in the wrong place."""
    from tests.import_graph import private_imports

    assert private_imports() == []


def test_the_graph_command_prints_the_arrows_the_cycles_and_the_longest_modules_of_any_tree(tmp_path, monkeypatch,
                                                                                             capsys):
    """``python -m tests.import_graph --root DIR``: the closing note's numbers for this tree or an older one."""
    from tests import import_graph

    for path, text in {"requestflow/__init__.py": "", "requestflow/board/__init__.py": "",
                       "requestflow/board/a.py": "import operators.b\nX = 1\nY = 2\n",
                       "operators/__init__.py": "", "operators/b.py": "from requestflow.board import a\n" * 5,
                       "operators/a.py": "from operators.b import _c\n", "dags/__init__.py": "",
                       "operators/c.py": "class Op:\n    def execute(self, context):\n" + "        pass\n" * 3,
                       "plugins/__init__.py": ""}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.setattr(import_graph, "ROOT", import_graph.ROOT)  # main sets it: restored after the test
    assert import_graph.main(["--root", str(tmp_path), "--largest", "2"]) == 0
    out = capsys.readouterr().out
    assert "  board     -> operators   1  UPWARD" in out and "  operators -> board       2" in out
    assert "cycle: operators.b <-> requestflow.board.a" in out
    assert ("largest modules (lines; 0 over 400, 14 lines in all):\n"
            "      5  operators.b\n      5  operators.c\n") in out
    assert ("file name a.py shared by: operators.a, requestflow.board.a\n"
            "private name imported: operators.a imports _c from operators.b\n") in out
    assert out.endswith("operators' execute (lines; the longest 4, limit 100): operators.c.Op 4\n")
    assert import_graph.largest_modules(1) == [(5, "operators.b")]


def test_without_the_checkout_the_cli_offers_only_the_librarys_commands(tmp_path):
    """A board's CLI (the wheel, no operators/ beside it): the controller's commands are not listed, and asking for
    one is an unknown command; from the checkout they are there."""
    root = str(BOARD.parents[1])
    code = ("import sys\n"
            f"sys.path = [p for p in sys.path if p not in ({root!r}, '')]\n"
            "from requestflow.cli import added_commands, main\n"
            "print(sorted(added_commands()))\n"
            "sys.exit(main(['sweep', '--models', 'mobilenet-v1-0.25-128']))\n")
    board = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert board.stdout.strip() == "[]"
    assert board.returncode == 2 and "invalid choice: 'sweep'" in board.stderr
    checkout = subprocess.run([sys.executable, "-c", "from requestflow.cli import added_commands; "
                               "print(sorted(added_commands()))"], capture_output=True, text=True, cwd=root)
    assert checkout.stdout.strip() == "['airflow-env', 'board-gc', 'queued', 'replay', 'sweep']"
