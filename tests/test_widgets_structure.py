"""The widgets package's shape, read from its source (no kernel): no module
imports another's private names, no import cycle between its modules, no
registration at import time, modules under 500 lines and functions under 60."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fm_kernel" / "widgets"



def _modules(root: Path) -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(root.glob("*.py"))}


def _sibling_imports(tree: ast.Module) -> list[tuple[str, list[str], bool]]:
    """(sibling module, names, at top level) for each ``from .x import ...``."""
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.append((node.module.split(".")[0], [a.name for a in node.names], id(node) in top))
    return out


def problems(root: Path) -> list[str]:
    mods = _modules(root)
    found = []
    graph: dict[str, set[str]] = {}
    for name, tree in mods.items():
        for sibling, names, at_top in _sibling_imports(tree):
            graph.setdefault(name, set()).add(sibling)
            private = [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{name} imports private {private} from {sibling}")
            if not at_top:
                found.append(f"{name} imports {sibling} inside a function")
    found += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    for name, tree in mods.items():
        for node in tree.body:  # a call at module level that registers something
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                found.append(f"{name} calls {ast.unparse(node.value.func)}() at import time")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                cycles.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its least name
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return cycles


def test_no_private_imports_no_cycles_no_import_time_registration():
    assert problems(PACKAGE) == []


def test_the_checker_sees_what_the_package_once_had(tmp_path):
    # The shape the package had before base.py: inspector took the timeline's
    # private helpers, the timeline imported the inspector inside functions,
    # and runs registered its panel at import.
    (tmp_path / "timeline.py").write_text(
        "def _message(t): return t\n"
        "def show():\n    from .inspector import DiffWidget\n")
    (tmp_path / "inspector.py").write_text("from .timeline import _message\nclass DiffWidget: ...\n")
    (tmp_path / "runs.py").write_text("from .timeline import register_panel\n"
                                      "register_panel('Flow runs', None)\n")
    found = problems(tmp_path)
    assert "inspector imports private ['_message'] from timeline" in found
    assert "timeline imports inspector inside a function" in found
    assert "import cycle: inspector -> timeline -> inspector" in found
    assert "runs calls register_panel() at import time" in found


def test_modules_and_functions_are_short():
    long_modules = {p.name: n for p in PACKAGE.glob("*.py")
                    if (n := len(p.read_text().splitlines())) >= 500}
    assert long_modules == {}
    long_functions = []
    for name, tree in _modules(PACKAGE).items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n >= 60:
                    long_functions.append(f"{name}.{node.name}: {n} lines")
    assert long_functions == []
