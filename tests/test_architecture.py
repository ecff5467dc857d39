"""The package's shape, checked from its source (ast only; nothing is imported):
no import cycles, dependencies pointing down the layers, no private names
reached across subpackages, modules and functions short enough to read, and
DuckDB behind the store alone. Each failure lists every offender as
``path:line`` with the statement, so the message is the to-do list.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PKG = "fm_kernel"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Low -> high. A module may import from its own layer or lower ones; a
# subpackage's modules may import each other freely (cycles aside).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "tables", "http_client"),
    ("record",),
    ("state",),
    ("endpoint",),
    ("flows",),
    ("runtime",),
    ("api",),
    ("widgets",),
    ("magics", "magic_help"),
    ("kernel", "idle"),
    ("cli", "__main__"),
]
LAYER = {head: n for n, heads in enumerate(LAYERS) for head in heads}


@dataclass(frozen=True)
class Import:
    path: str          # repo-relative file
    line: int
    source: str        # the statement as written
    importer: str      # dotted module name
    target: str        # dotted module the statement makes Python execute
    names: tuple[str, ...]  # names taken from the target ("" for `import x`)
    module_level: bool  # runs at import time (not inside a function)
    local: str | None = None  # the name it binds to the target module, if it binds one

    def where(self) -> str:
        return f"{self.path}:{self.line} `{self.source}`"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {_module_name(p): p for p in sorted((ROOT / PKG).rglob("*.py"))}
PACKAGES = {m for m, p in FILES.items() if p.name == "__init__.py"}


def _known(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the package."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in FILES:
            return name
        parts.pop()
    return None


def _lazy_names() -> dict[str, str]:
    """The top package's lazily loaded names -> their module (from _LAZY)."""
    tree = ast.parse(FILES[PKG].read_text())
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "fromkeys" and len(node.args) == 2
                and isinstance(node.args[0], ast.List) and isinstance(node.args[1], ast.Constant)):
            target = f"{PKG}{node.args[1].value}" if str(node.args[1].value).startswith(".") \
                else str(node.args[1].value)
            for elt in node.args[0].elts:
                if isinstance(elt, ast.Constant):
                    found[elt.value] = target
    return found


LAZY = _lazy_names()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path):
        self.module, self.rel = module, str(path.relative_to(ROOT))
        self.is_package = path.name == "__init__.py"
        self.depth = 0  # function nesting
        self.imports: list[Import] = []
        self.externals: list[tuple[int, str, str]] = []  # (line, top-level name, source)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # annotations only: never executed
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, node: ast.stmt, target: str, names: tuple[str, ...],
             local: str | None = None) -> None:
        self.imports.append(Import(self.rel, node.lineno, ast.unparse(node), self.module, target,
                                   names, self.depth == 0, local))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == PKG:
                # `import fm_kernel.x.y` binds fm_kernel, not the module
                local = alias.asname or (alias.name if "." not in alias.name else None)
                self._add(node, _known(alias.name) or PKG, ("",), local)
            else:
                self.externals.append((node.lineno, alias.name.split(".")[0], ast.unparse(node)))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base.pop()
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != PKG:
            self.externals.append((node.lineno, source.split(".")[0], ast.unparse(node)))
            return
        source = _known(source) or PKG
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in FILES:  # `from pkg import module`
                self._add(node, sub, ("",), alias.asname or alias.name)
            elif source == PKG and alias.name in LAZY:
                self._add(node, _known(LAZY[alias.name]) or PKG, (alias.name,))
            else:
                self._add(node, source, (alias.name,))

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("duckdb") / __import__("duckdb") hide an import
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self.externals.append((node.lineno, node.args[0].value.split(".")[0], ast.unparse(node)))
        self.generic_visit(node)


def _collect() -> tuple[list[Import], dict[str, list[tuple[int, str, str]]], dict[str, ast.Module]]:
    imports: list[Import] = []
    externals: dict[str, list[tuple[int, str, str]]] = {}
    trees: dict[str, ast.Module] = {}
    for module, path in FILES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        trees[module] = tree
        c = _Collector(module, path)
        c.visit(tree)
        imports += c.imports
        externals[module] = c.externals
    return imports, externals, trees


IMPORTS, EXTERNALS, TREES = _collect()


def _subpackage(module: str) -> str:
    """fm_kernel.flows.core -> fm_kernel.flows; fm_kernel.runtime -> fm_kernel."""
    return module if module in PACKAGES else module.rsplit(".", 1)[0]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return 0 if len(parts) == 1 else LAYER.get(parts[1])


def _rel(module: str) -> str:
    return str(FILES[module].relative_to(ROOT))


def _executed(imp: Import) -> list[str]:
    """Modules an import runs: the target and its packages the importer is not inside."""
    parts = imp.target.split(".")
    out = []
    for n in range(2, len(parts) + 1):
        name = ".".join(parts[:n])
        if name in FILES and not (imp.importer + ".").startswith(name + "."):
            out.append(name)
    return out


def _cycles(edges: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(FILES):
        if v not in index:
            visit(v)
    return found


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


def test_the_checker_resolves_relative_and_function_level_imports() -> None:
    source = ("from .. import runtime\nfrom .store import Store, _lock_holder\n"
              "if TYPE_CHECKING:\n    from ..api import history\n"
              "def f():\n    from ..errors import UsageError\n    import duckdb\n")
    c = _Collector(f"{PKG}.record.probe", ROOT / PKG / "record" / "probe.py")
    c.visit(ast.parse(source))
    seen = [(i.line, i.target, i.names, i.module_level, i.local) for i in c.imports]
    assert seen == [
        (1, f"{PKG}.runtime", ("",), True, "runtime"),
        (2, f"{PKG}.record.store", ("Store",), True, None),
        (2, f"{PKG}.record.store", ("_lock_holder",), True, None),
        (6, f"{PKG}.errors", ("UsageError",), False, None),
    ], seen
    assert [(line, name) for line, name, _ in c.externals] == [(7, "duckdb")]


def test_every_module_is_parsed_and_has_a_layer() -> None:
    assert len(FILES) > 20, f"found only {len(FILES)} modules under {ROOT / PKG}"
    unplaced = [f"{_rel(m)} ({m})" for m in FILES if _layer(m) is None]
    assert not unplaced, _report(
        "modules outside every layer; add them to LAYERS in tests/test_architecture.py", unplaced)


def test_no_import_cycles_at_module_level() -> None:
    edges: dict[str, dict[str, list[Import]]] = {}
    for imp in IMPORTS:
        if imp.module_level:
            for target in _executed(imp):
                if target != imp.importer:
                    edges.setdefault(imp.importer, {}).setdefault(target, []).append(imp)
    problems = []
    for comp in _cycles(edges):
        members = set(comp)
        problems.append("cycle: " + " <-> ".join(comp))
        for a in comp:
            for b, imps in sorted(edges.get(a, {}).items()):
                if b in members:
                    problems += sorted({f"    {imp.where()} -> {b}" for imp in imps})
    assert not problems, _report(
        f"{sum(p.startswith('cycle') for p in problems)} import cycle(s) among module-level "
        "imports; break them with a lower module both can import", problems)


def test_imports_point_down_the_layers() -> None:
    offenders: list[str] = []
    for imp in IMPORTS:
        if imp.importer == PKG:
            continue  # its own rule below
        here, there = _layer(imp.importer), _layer(imp.target)
        if here is None or there is None or _subpackage(imp.importer) == _subpackage(imp.target):
            continue
        if there > here:
            entry = f"{imp.where()}: layer {here} {imp.importer} imports layer {there} " \
                    f"{imp.target}" + ("" if imp.module_level else " (in a function)")
            if entry not in offenders:  # one line per statement, not per imported name
                offenders.append(entry)
    order = " < ".join("/".join(heads) for heads in LAYERS)
    assert not offenders, _report(f"upward imports (layers: {order})", offenders)


def test_top_package_imports_only_the_error_tree_eagerly() -> None:
    eager = [imp for imp in IMPORTS if imp.importer == PKG and imp.module_level]
    offenders = [f"{imp.where()} -> {imp.target}" for imp in eager
                 if imp.target != f"{PKG}.errors"]
    assert any(imp.target == f"{PKG}.errors" for imp in eager), "fm_kernel/__init__.py no longer " \
        "imports the error tree; this test no longer knows what it checks"
    assert not offenders, _report(
        "fm_kernel/__init__.py imports more than errors at import time; load it lazily "
        "through _LAZY", offenders)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses() -> list[tuple[Import | None, str, str, int, str]]:
    """(import, importer, target, line, what) for each private name or module
    one module takes from another: imported, or read off an imported module."""
    uses: list[tuple[Import | None, str, str, int, str]] = []
    aliases: dict[str, dict[str, str]] = {}  # importer -> local name -> module
    for imp in IMPORTS:
        tail = imp.target.split(".")[1:]
        if any(_private(p) for p in tail):
            uses.append((imp, imp.importer, imp.target, imp.line, f"private module {imp.target}"))
        for name in imp.names:
            if name and _private(name):
                uses.append((imp, imp.importer, imp.target, imp.line, name))
        if imp.local:
            aliases.setdefault(imp.importer, {})[imp.local] = imp.target
    for importer, names in aliases.items():
        for n in ast.walk(TREES[importer]):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                    and n.value.id in names and _private(n.attr)):
                uses.append((None, importer, names[n.value.id], n.lineno,
                             f"{n.value.id}.{n.attr}"))
    return uses


def test_no_private_names_across_subpackages() -> None:
    across, within = [], []
    for imp, importer, target, line, what in _private_uses():
        text = imp.where() if imp else f"{_rel(importer)}:{line}"
        entry = f"{text}: {what} from {target}"
        same = _subpackage(importer) == _subpackage(target)
        (within if same else across).append(entry)
    if within:  # allowed, but worth seeing: -rA or -s shows them
        print(_report("private names used inside their own subpackage (allowed)", sorted(set(within))))
    assert not across, _report(
        "private names reached across subpackages; make them public in their package's face "
        "or move the code", sorted(set(across)))


def test_modules_are_at_most_500_lines() -> None:
    long = [f"{_rel(m)}: {n} lines" for m, p in FILES.items()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, _report(f"modules over {MAX_MODULE_LINES} lines", long)


def test_functions_are_at_most_60_lines() -> None:
    long = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long.append((n, f"{_rel(module)}:{node.lineno} {node.name}(): {n} lines"))
    assert not long, _report(f"functions over {MAX_FUNCTION_LINES} lines",
                             [text for _, text in sorted(long, reverse=True)])


# The history's connection (store) and user SQL's own locked instance (sandbox).
DUCKDB_MODULES = (f"{PKG}.record.store", f"{PKG}.record.sandbox")


def test_only_the_store_and_the_sql_sandbox_import_duckdb() -> None:
    for module in DUCKDB_MODULES:
        assert any(name == "duckdb" for _, name, _ in EXTERNALS[module]), \
            f"{_rel(module)} no longer imports duckdb; update this test"
    offenders = [f"{_rel(m)}:{line} `{src}`" for m, found in EXTERNALS.items()
                 if m not in DUCKDB_MODULES for line, name, src in found if name == "duckdb"]
    assert not offenders, _report("duckdb imported outside record/store.py and record/sandbox.py",
                                  offenders)
