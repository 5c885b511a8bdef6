"""ursa_core's import graph: no cycle, and every room (subpackage, or a module at the top) imports only rooms below
it in ROOMS. Every import is read from the source (ast), function-level ones too."""
import ast
from pathlib import Path

import ursa_core

PACKAGE_DIR = Path(ursa_core.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)] if level else []
    return ".".join(base + ([module] if module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> modules of the same package it imports (anywhere in its body)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, is_package, node.level, node.module) if node.level else node.module
                # `from pkg import mod` imports the submodule; `from mod import name` the module itself.
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles as groups of modules that reach each other (strongly connected components > 1)."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen
    reachable = {name: reach(name) for name in graph}
    groups = {tuple(sorted(n for n in reachable[name] if name in reachable[n])) for name in graph
              if name in reachable[name]}
    return sorted(list(group) for group in groups)


# Cycles whose removal is another piece of work in flight (issue 9 merges cli.py and headless.py into one CLI
# home). Strict: once the cycle is gone the test fails until its entry is deleted here, so this list only shrinks.
PENDING: list[list[str]] = []


# The rooms of ursa_core from the ground up (docs/ARCHITECTURE.md, "Module map"): a module may import its own room and
# the rooms before its own, never one after it. A new room is placed here, or the test fails.
ROOMS = ("errors", "files", "attention", "model", "rules", "path", "solver", "visual_tokenizer", "checkpoint",
         "runtime", "sampling", "parallel", "batch", "__init__", "cli", "__main__")  # cli reads __version__ there


def room(module: str) -> str:
    """ursa_core.sampling.generate -> sampling; ursa_core.rules -> rules; ursa_core (the face) -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]], rooms: tuple[str, ...]) -> list[tuple[str, str]]:
    floor = {name: i for i, name in enumerate(rooms)}
    return sorted((a, b) for a, targets in graph.items() for b in targets if floor[room(b)] > floor[room(a)])


def test_every_room_imports_only_rooms_below_it():
    graph = import_graph(PACKAGE_DIR)
    assert {room(module) for module in graph} == set(ROOMS), "a room is missing from ROOMS (or gone)"
    assert upward_imports(graph, ROOMS) == []


def test_upward_import_finder_sees_a_lower_room_importing_a_higher_one(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("low", "high"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "high" / "a.py").write_text("from ..low import b\n")
    (pkg / "low" / "b.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert upward_imports(graph, ("low", "high", "__init__")) == []
    (pkg / "low" / "b.py").write_text("def f():\n    from ..high import a\n")
    assert upward_imports(import_graph(pkg), ("low", "high", "__init__")) == [("pkg.low.b", "pkg.high.a")]


def test_ursa_core_has_no_import_cycle():
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 20 and graph["ursa_core.solver.euler"]  # the walk sees the package and its imports
    found = cycles(graph)
    assert [c for c in found if c not in PENDING] == [], f"import cycles: {found}"
    assert [c for c in PENDING if c not in found] == [], "a pending cycle is gone: delete it from PENDING"


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n    return c\n")
    (pkg / "c.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert cycles(graph) == []
    (pkg / "c.py").write_text("def g():\n    from pkg.a import f\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
