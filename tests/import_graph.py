"""requestflow's import graph, read from the sources (AST: an import inside a function counts like any other).

    python -m tests.import_graph                # arrows between the layers, import cycles, the largest modules,
                                                # file names two modules share, private names imported across
    python -m tests.import_graph --root DIR     # the same for another tree, e.g. an older commit:
        git archive 3d15e25 | tar -x -C /tmp/old && python -m tests.import_graph --root /tmp/old

Layers, from the top (ADR 0007): ``dags`` -> ``operators`` / ``plugins`` -> ``requestflow.cli`` /
``requestflow.results`` -> ``requestflow.board`` -> ``requestflow`` itself and ``requestflow.errors`` (the base
every layer may use). An arrow may only point down (or stay in its layer); ``tests/board/test_isolation.py`` holds the
graph to that, and to having no import cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("requestflow", "operators", "dags", "plugins")
# the layers, top first; a module belongs to the first whose prefix it has
LAYERS = (("dags", "dags"), ("operators", "operators"), ("plugins", "plugins"), ("cli", "requestflow.cli"),
          ("results", "requestflow.results"), ("board", "requestflow.board"), ("base", "requestflow.errors"))
RANK = {"dags": 0, "operators": 1, "plugins": 1, "cli": 2, "results": 2, "board": 3, "base": 4}
MAX_LINES = 400  # a source module longer than this has more than one job (issue #16)
MAX_EXECUTE_LINES = 100  # an operator's execute turns its arguments into a service call or two (issue #16)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    files = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[module_name(path)] = path
    return files


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The first-party modules ``path`` (module ``name``) imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:  # "from a.b import c": the module a.b.c, else a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = source_files()
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def layer(module: str) -> str:
    if module == "requestflow":  # the package itself: its version
        return "base"
    for label, prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return label
    raise ValueError(f"{module} is in no layer")


def upward_arrows(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower layer into a higher one (the library importing the controller, say)."""
    return sorted((a, b) for a, targets in edges.items() for b in targets if RANK[layer(b)] < RANK[layer(a)])


def layer_arrows(edges: dict[str, set[str]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for a, targets in edges.items():
        for b in targets:
            if layer(a) != layer(b):
                counts[(layer(a), layer(b))] += 1
    return dict(sorted(counts.items()))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def private_imports() -> list[tuple[str, str, str]]:
    """(module, the module it imports from, name) for each ``_private`` name one source module imports from another
    (``from a.b import _c``, wherever the statement is; dunder names are not private)."""
    files = source_files()
    found = []
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] not in SOURCES and base != "requestflow":
                continue
            found += [(name, base, alias.name) for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    return sorted(found)


def shared_file_names() -> dict[str, list[str]]:
    """File name -> the source modules that have it, for the names more than one module has (``__init__.py``
    aside): ``replay.py`` in two layers is two things a reader must tell apart."""
    modules: dict[str, list[str]] = defaultdict(list)
    for name, path in source_files().items():
        if path.name != "__init__.py":
            modules[path.name].append(name)
    return {file: sorted(names) for file, names in sorted(modules.items()) if len(names) > 1}


def largest_modules(count: int | None = None) -> list[tuple[int, str]]:
    """(lines, module) of the source modules, longest first (bench/ and native/ are not sources)."""
    sizes = sorted(((len(path.read_text().splitlines()), name) for name, path in source_files().items()),
                   key=lambda pair: (-pair[0], pair[1]))
    return sizes if count is None else sizes[:count]


def operator_executes() -> list[tuple[int, str]]:
    """(lines, module.Class) of every ``execute`` method in operators/ and plugins/, longest first: an operator is
    thin when its execute only calls the services below it."""
    found = []
    for name, path in source_files().items():
        if not name.startswith(("operators", "plugins")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found += [(item.end_lineno - item.lineno + 1, f"{name}.{node.name}") for item in node.body
                          if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == "execute"]
    return sorted(found, key=lambda pair: (-pair[0], pair[1]))


def main(argv: list[str] | None = None) -> int:
    global ROOT
    parser = argparse.ArgumentParser(prog="python -m tests.import_graph", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree to read (default: this checkout)")
    parser.add_argument("--largest", type=int, default=10, metavar="N", help="list the N longest modules")
    args = parser.parse_args(argv)
    ROOT = args.root.resolve()
    edges = graph()
    print(f"{len(edges)} modules, {sum(len(t) for t in edges.values())} imports between them")
    print("arrows between layers (count of module imports):")
    for (a, b), count in layer_arrows(edges).items():
        mark = "  UPWARD" if RANK[b] < RANK[a] else ""
        print(f"  {a:9} -> {b:9} {count:3}{mark}")
    for a, b in upward_arrows(edges):
        print(f"upward: {a} -> {b}")
    for component in cycles(edges):
        print(f"cycle: {' <-> '.join(component)}")
    sizes = largest_modules()
    over = [size for size in sizes if size[0] > MAX_LINES]
    print(f"largest modules (lines; {len(over)} over {MAX_LINES}, {sum(n for n, _ in sizes)} lines in all):")
    for lines, name in sizes[:args.largest]:
        print(f"  {lines:5}  {name}")
    for file, names in shared_file_names().items():
        print(f"file name {file} shared by: {', '.join(names)}")
    for name, source, private in private_imports():
        print(f"private name imported: {name} imports {private} from {source}")
    executes = operator_executes()
    if executes:
        print(f"operators' execute (lines; the longest {executes[0][0]}, limit {MAX_EXECUTE_LINES}): "
              + ", ".join(f"{name} {lines}" for lines, name in executes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
