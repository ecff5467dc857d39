"""What a cell could have touched: static analysis of its code, and walks
of the object graphs its names reach. Capture (snapshot.py) fingerprints only
what this module says a cell could have changed; docs/time-travel.md lists
the mutations that escape it."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterator
from typing import Any


from .pickling import cell_value, loaded_numpy, qualname


WALK_LIMIT = 2_000_000   # nodes visited per capture when looking for sharing
# Names and attributes through which a cell reaches the namespace without
# naming the variables: static analysis cannot follow them, so capture checks
# everything.
DYNAMIC_NAMES = frozenset({
    "exec", "eval", "globals", "locals", "vars", "get_ipython", "__import__",
    "compile", "__main__", "__builtins__", "execfile",
})
DYNAMIC_ATTRS = frozenset({
    "get_referrers", "get_objects", "f_globals", "f_locals",
    "__globals__", "user_ns", "run_cell", "run_line_magic", "run_cell_magic",
    "_getframe", "currentframe",
})
ATOMS = (int, float, complex, str, bytes, bool, type(None), range, slice)
ATOM_TYPES = frozenset(ATOMS)


# --------------------------------------------------------------------------
# Static analysis
# --------------------------------------------------------------------------

def _lib_paths() -> tuple[str, ...]:
    paths = set()
    for k in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(k)
        if p:
            paths.add(os.path.realpath(p))
    for p in [*getattr(site, "getsitepackages", lambda: [])(), site.getusersitepackages()]:
        paths.add(os.path.realpath(p))
    return tuple(paths)


@functools.lru_cache(maxsize=512)
def _is_user_module(top: str) -> bool:
    """A module outside the interpreter's library dirs: its import or functions
    may reach into the notebook namespace (``import __main__``)."""
    if top in sys.builtin_module_names or top == "fm_kernel":
        return False
    mod = sys.modules.get(top)
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if mod is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False  # the import will fail; nothing runs
        origin = spec.origin
        if origin in (None, "built-in", "frozen"):
            locs = list(spec.submodule_search_locations or [])
            origin = locs[0] if locs else None
    if origin is None:
        return False
    real = os.path.realpath(origin)
    return not any(real.startswith(p + os.sep) for p in _lib_paths())


def analyse_code(code: str) -> tuple[set[str], str | None]:
    """Names a cell loads, stores or deletes; or a reason to check everything."""
    for line in code.splitlines():
        s = line.lstrip()
        if s.startswith(("%", "!")):
            return set(), "the cell has a magic or shell line"
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(), "the cell is not plain Python (IPython syntax?)"
    names: set[str] = set()
    harmless: set[int] = set()  # vars(x) is x.__dict__; only bare vars() is the namespace
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars" and node.args:
            harmless.add(id(node.func))
        if isinstance(node, ast.Name):
            if node.id in DYNAMIC_NAMES and id(node) not in harmless:
                return set(), f"the cell uses {node.id}"
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            if node.attr in DYNAMIC_ATTRS or (node.attr == "modules" and isinstance(node.value, ast.Name)
                                              and node.value.id == "sys"):
                return set(), f"the cell uses .{node.attr}"
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom):
                if node.level or not node.module:
                    return set(), "the cell has a relative import"
                mods = [node.module]
            else:
                mods = [a.name for a in node.names]
            for m in mods:
                if m.split(".")[0] == "__main__" or _is_user_module(m.split(".")[0]):
                    return set(), f"the cell imports the user module {m}"
            for a in node.names:
                if a.name == "*":
                    return set(), "the cell has a star import"
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return names, None


def code_names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names used by a code object and its nested code."""
    yield from code.co_names
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from code_names(c)


# --------------------------------------------------------------------------
# Object-graph walk: sharing between names, and the code they can run
# --------------------------------------------------------------------------
def _is_notebook_class(obj: Any) -> bool:
    return isinstance(obj, type) and getattr(obj, "__module__", None) == "__main__"


class ObjectWalk:
    """Reachable shareable objects of one name (their ids), and the notebook
    functions among them.  Containers, instance dicts and slots, closures,
    ndarray bases and notebook classes are followed; DataFrames, modules and
    library classes/functions are leaves (pandas copy-on-write makes frames
    independent values; the others are restored by reference)."""

    def __init__(self, obj: Any, ns: dict, budget: list[int]) -> None:
        self.ids: set[int] = set()
        self.functions: list[types.FunctionType] = []
        self.arrays: list[Any] = []
        self.truncated = False
        self._ns = ns
        self._np = loaded_numpy()
        stack = [obj]
        while stack:
            o = stack.pop()
            t = type(o)
            if t in ATOM_TYPES or isinstance(o, (types.ModuleType, types.BuiltinFunctionType)):
                continue
            if id(o) in self.ids:
                continue
            if budget[0] <= 0:
                self.truncated = True
                break
            budget[0] -= 1
            try:
                self._visit(o, t, stack)
            except Exception:
                # A hostile __getattr__/__dict__ must not break capture; the
                # object is then treated as a leaf (see docs: hidden sharing).
                continue

    def _visit(self, o: Any, t: type, stack: list[Any]) -> None:
        """Record ``o`` if it can be shared and push what it holds."""
        np = self._np
        if t in (list, tuple, set, frozenset):
            if o:
                self.ids.add(id(o))
                # set(map(type, ...)) runs in C: a million-int list
                # costs milliseconds instead of a Python-level visit each.
                if not set(map(type, o)) <= ATOM_TYPES:
                    stack.extend(o)
        elif t is dict:
            self.ids.add(id(o))
            if not set(map(type, o.values())) <= ATOM_TYPES:
                stack.extend(o.values())
            if not set(map(type, o)) <= ATOM_TYPES:
                stack.extend(o)
        elif t is bytearray:
            self.ids.add(id(o))
        elif t is types.FunctionType:
            if o.__globals__ is self._ns or o.__module__ == "__main__":
                self.ids.add(id(o))
                self.functions.append(o)
                stack.extend(cell_value(c) for c in o.__closure__ or ())
                stack.extend(o.__defaults__ or ())
                stack.extend((o.__kwdefaults__ or {}).values())
                stack.extend(o.__dict__.values())
        elif t is types.MethodType:
            stack += [o.__func__, o.__self__]
        elif t is functools.partial:
            stack += [o.func, *o.args, *o.keywords.values()]
        elif isinstance(o, (staticmethod, classmethod)):
            stack.append(o.__func__)
        elif isinstance(o, property):
            stack += [o.fget, o.fset, o.fdel]
        elif isinstance(o, type):
            if _is_notebook_class(o):
                self.ids.add(id(o))
                stack.extend(o.__dict__.values())
                stack.extend(o.__bases__)
        elif np is not None and isinstance(o, np.ndarray):
            self.ids.add(id(o))
            self.arrays.append(o)
            if o.base is not None:
                self.ids.add(id(o.base))  # two views of one buffer share it
                stack.append(o.base)
            if o.dtype == object and o.size <= 100_000:
                stack.extend(o.ravel().tolist())
        elif qualname(t).startswith("pandas."):
            self.ids.add(id(o))
        else:
            self._visit_instance(o, t, stack)

    def _visit_instance(self, o: Any, t: type, stack: list[Any]) -> None:
        d = getattr(o, "__dict__", None) if hasattr(t, "__dict__") else None
        slots = [s for c in t.__mro__ for s in c.__dict__.get("__slots__", ())]
        if isinstance(d, dict) or slots:
            self.ids.add(id(o))
            if isinstance(d, dict):
                stack.append(d)
            for s in slots:
                v = getattr(o, s, None) if isinstance(s, str) else None
                if v is not None:
                    stack.append(v)
        if _is_notebook_class(t):
            stack.append(t)
