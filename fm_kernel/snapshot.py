"""Capture, fingerprint and restore of the user namespace, incrementally.

A *state* is a ``Manifest``: name -> ``VarEntry``.  Names whose object graphs
overlap form a *group*; a group is pickled together (so ``b is a`` survives a
restore) and stored as a small JSON header naming content-addressed chunks of
the pickle stream and of its out-of-band buffers (protocol 5).  ``VarEntry.ref``
is the key of that header: equal refs mean "same stored group", which is what
makes restores incremental.

Capture does not re-hash the world after every cell.  It asks which names the
cell could have touched (``analyse_code`` plus a transitive walk through the
notebook functions, classes and closures those names reach), adds every small
object (re-pickling those is cheaper than reasoning about them), and only
fingerprints those candidates.  See docs/time-travel.md for what can be missed.
"""
from __future__ import annotations

import ast
import builtins
import contextvars
import copyreg
import functools
import importlib.util
import io
import json
import os
import pickle
import reprlib
import site
import sys
import sysconfig
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cloudpickle

from .objects import ObjectFiles, chunk_keys, digest

__all__ = ["Snapshotter", "Manifest", "VarEntry", "Capture", "RestoreReport", "analyse_code"]

CHUNK = 2 * 1024 * 1024  # 1% of a 100 MB array dirties at most 2 chunks (4%)
SMALL_ONE = 256 * 1024   # objects this small are re-fingerprinted every cell...
SMALL_TOTAL = 1024 * 1024  # ...up to this many bytes in all...
SMALL_COST = 0.002        # ...unless walking and pickling one took longer than this (s):
                          # a matplotlib Figure is small in bytes but costs ~40 ms a cell
VALUE_MAX = 1024         # JSON values kept in the manifest up to this size
WALK_LIMIT = 2_000_000   # nodes visited per capture when looking for sharing
SKIP_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})

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

# Functions restored from the store get this dict as __globals__ (the live ns
# during restore), so a restored ``def f(): data['k'] = 1`` mutates the
# namespace's ``data`` rather than a private copy.
_LOAD_GLOBALS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("_LOAD_GLOBALS", default=None)


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------
@dataclass
class VarEntry:
    name: str
    type: str
    size_bytes: int
    summary: str
    value: Any = None          # JSON-able value for scalars/short strings/small containers
    restorable: bool = True
    reason: str | None = None  # why not restorable
    ref: str = ""              # key of the stored group header ("" if not stored)
    fp: str = ""               # content fingerprint: equal fp <=> equal pickled content

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | str) -> VarEntry:
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Manifest(Mapping[str, VarEntry]):
    """The full state after a step.  Immutable once built."""

    def __init__(self, entries: Mapping[str, VarEntry] | None = None) -> None:
        self._entries: dict[str, VarEntry] = dict(entries or {})
        self._sig: str | None = None

    def __getitem__(self, name: str) -> VarEntry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Manifest({sorted(self._entries)})"

    def groups(self) -> dict[str, list[str]]:
        """Stored group ref -> the names it holds."""
        out: dict[str, list[str]] = {}
        for n, e in self._entries.items():
            if e.ref:
                out.setdefault(e.ref, []).append(n)
        return out

    def signature(self) -> str:
        if self._sig is None:
            parts = sorted(f"{n}\0{e.ref}\0{e.fp}" for n, e in self._entries.items())
            self._sig = digest("\n".join(parts).encode())
        return self._sig

    def to_json(self) -> str:
        return json.dumps({"v": 1, "vars": {n: e.to_json() for n, e in self._entries.items()}})

    @classmethod
    def from_json(cls, data: str | dict) -> Manifest:
        if isinstance(data, str):
            data = json.loads(data)
        return cls({n: VarEntry.from_json(e) for n, e in data["vars"].items()})


@dataclass
class Capture:
    manifest: Manifest
    changed: set[str]
    deleted: set[str]
    bytes_written: int = 0
    bytes_hashed: int = 0            # bytes fingerprinted: proves untouched buffers were skipped
    candidates: set[str] = field(default_factory=set)
    full_scan_reason: str | None = None  # why every name was checked, if it was
    seconds: float = 0.0


@dataclass
class RestoreReport:
    restored: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    not_restored: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Pickling
# --------------------------------------------------------------------------
def _make_function(code: types.CodeType, name: str, ncells: int) -> types.FunctionType:
    g = _LOAD_GLOBALS.get()
    if g is None:  # read-only inspection: a private module namespace
        g = {"__name__": "__main__", "__builtins__": builtins}
    closure = tuple(types.CellType() for _ in range(ncells)) if ncells else None
    return types.FunctionType(code, g, name, None, closure)


def _array_roots(arrays: list[Any]) -> dict[int, Any]:
    """Map each memory owner to the array that spans it.  numpy collapses view
    chains to the first non-array owner, so a restored array (whose base is
    the bytearray it was rebuilt on) and its views share ``.base``: the
    widest array over that base is the one to pickle by value."""
    np = sys.modules.get("numpy")
    roots: dict[int, Any] = {}
    for a in arrays:
        if a.base is None:
            roots[id(a)] = a
        elif not isinstance(a.base, np.ndarray) and a.flags.contiguous:
            cur = roots.get(id(a.base))
            if cur is None or (cur.base is not None and a.nbytes > cur.nbytes):
                roots[id(a.base)] = a
    return roots


def _rebuild_view(base: Any, dtype: Any, shape: tuple, strides: tuple, offset: int) -> Any:
    np = sys.modules["numpy"]
    return np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)


_EMPTY = "__fm_empty_cell__"


def _set_function_state(fn: types.FunctionType, state: tuple) -> None:
    defaults, kwdefaults, cells, fdict, annotations, doc, qualname, module = state
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    for cell, value in zip(fn.__closure__ or (), cells):
        if value is not _EMPTY:
            cell.cell_contents = value
    fn.__dict__.update(fdict or {})
    fn.__annotations__ = annotations
    fn.__doc__, fn.__qualname__, fn.__module__ = doc, qualname, module


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, except that functions living in the notebook namespace are
    pickled without their globals (cloudpickle would copy every global they
    name, huge arrays included) and rebound to the namespace on load."""

    def __init__(self, file: io.BytesIO, ns: dict, buffers: list, roots: dict[int, Any]) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffers.append)
        self._ns = ns
        # id of a memory owner -> the array pickled here that spans it (see _array_roots)
        self._roots = roots
        np = sys.modules.get("numpy")
        self._np_type = np.ndarray if np is not None else None

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is self._np_type and obj.base is not None:
            root = self._roots.get(id(obj.base))
            if root is not None and root is not obj and not obj.dtype.hasobject:
                # numpy pickles a view as a copy; rebuild it over the array
                # that owns its memory, so ``v = a[2:5]`` still writes
                # through to ``a`` after a restore.
                off = obj.__array_interface__["data"][0] - root.__array_interface__["data"][0]
                if 0 <= off < root.nbytes:
                    return (_rebuild_view, (root, obj.dtype, obj.shape, obj.strides, off))
        if t is types.FunctionType and obj.__globals__ is self._ns:
            closure = obj.__closure__ or ()
            state = (obj.__defaults__, obj.__kwdefaults__, tuple(_cell_value(c) for c in closure),
                     obj.__dict__ or None, obj.__annotations__, obj.__doc__, obj.__qualname__,
                     obj.__module__)
            # 6-tuple with a state setter: the function exists (and is memoised)
            # before its closure is pickled, so self-referencing closures work.
            return (_make_function, (obj.__code__, obj.__name__, len(closure)), state,
                    None, None, _set_function_state)
        if isinstance(obj, type) and obj.__module__ == "__main__" and "__slotnames__" not in obj.__dict__:
            # Pickling the first instance caches __slotnames__ on the class;
            # do it now so the class's fingerprint does not change then.
            try:
                copyreg._slotnames(obj)
            except Exception:
                pass
        if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
            # cloudpickle would read a file's whole content; an open file is
            # process state, not data.
            raise TypeError(f"cannot pickle {_qualname(t)}: an open file or stream")
        return super().reducer_override(obj)


def _untracked_class(type_constructor: Any, name: str, bases: tuple, type_kwargs: dict,
                     class_tracker_id: Any, extra: Any) -> type:
    return cloudpickle.cloudpickle._make_skeleton_class(type_constructor, name, bases, type_kwargs,
                                                        None, extra)


class _IsolatedUnpickler(pickle.Unpickler):
    """For inspecting a past state.  cloudpickle maps a notebook class to the
    live class of the same origin and then *overwrites its attributes* with the
    pickled ones; an inspection must get a private copy instead."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_make_skeleton_class" and module.startswith("cloudpickle"):
            return _untracked_class
        return super().find_class(module, name)


@dataclass
class _Payload:
    """One pickled tuple of objects, chunked and hashed, not yet written."""
    main: bytes
    main_digest: str  # the stream is cut into chunks only if it must be written
    buffers: list[memoryview]
    buffer_keys: list[list[tuple[str, int]]]
    fp: str
    nbytes: int


def _qualname(t: type) -> str:
    mod = getattr(t, "__module__", "") or ""
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


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


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names used by a code object and its nested code."""
    yield from code.co_names
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _code_names(c)


# --------------------------------------------------------------------------
# Object-graph walk: sharing between names, and the code they can run
# --------------------------------------------------------------------------
def _is_notebook_class(obj: Any) -> bool:
    return isinstance(obj, type) and getattr(obj, "__module__", None) == "__main__"


class _Walk:
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
        stack = [obj]
        np = sys.modules.get("numpy")
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
                    if o.__globals__ is ns or o.__module__ == "__main__":
                        self.ids.add(id(o))
                        self.functions.append(o)
                        stack.extend(_cell_value(c) for c in o.__closure__ or ())
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
                elif _qualname(t).startswith("pandas."):
                    self.ids.add(id(o))
                else:
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
            except Exception:
                # A hostile __getattr__/__dict__ must not break capture; the
                # object is then treated as a leaf (see docs: hidden sharing).
                continue


# --------------------------------------------------------------------------
# Presentation: summary, value, size
# --------------------------------------------------------------------------
_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120


def _summary(obj: Any) -> str:
    t = type(obj)
    try:
        if hasattr(obj, "shape") and hasattr(obj, "dtype") and t.__name__ == "ndarray":
            return f"ndarray {obj.dtype} {obj.shape}"
        if t.__name__ == "DataFrame":
            return f"DataFrame {obj.shape[0]}×{obj.shape[1]}"
        if t.__name__ == "Series":
            return f"Series {obj.dtype} ({len(obj)},)"
        if isinstance(obj, types.ModuleType):
            return f"module {obj.__name__}"
        if isinstance(obj, types.FunctionType):
            return f"function {obj.__qualname__}"
        if isinstance(obj, type):
            return f"class {obj.__qualname__}"
        return _repr.repr(obj)[:200]
    except Exception as e:  # a user __repr__ may raise; the summary must not
        return f"<{t.__name__}: repr failed: {type(e).__name__}>"[:200]


def _json_value(obj: Any) -> Any:
    t = type(obj)
    if obj is None or t in (bool, int):
        return obj
    if t is float:
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if t is str:
        return obj if len(obj) <= VALUE_MAX else None
    if hasattr(obj, "item") and getattr(obj, "shape", None) == () and _qualname(t).startswith("numpy."):
        return _json_value(obj.item())
    if t in (list, tuple, dict) and len(obj) <= VALUE_MAX // 2:
        try:
            s = json.dumps(obj, allow_nan=False)
        except (TypeError, ValueError):
            return None
        return json.loads(s) if len(s) <= VALUE_MAX else None
    return None


# --------------------------------------------------------------------------
# Snapshotter
# --------------------------------------------------------------------------
class Snapshotter:
    """Captures namespaces into ``objects`` and restores them.

    It remembers the ids of the objects it last saw, keyed by the manifest it
    produced or restored, so it can notice rebinding it did not predict; a
    manifest it never saw (e.g. loaded from the database by a fresh kernel)
    makes the next capture a full check, which is always correct."""

    def __init__(self, objects: ObjectFiles, hidden: set[str] | None = None, *,
                 chunk_size: int = CHUNK) -> None:
        self.objects = objects
        self.hidden = hidden if hidden is not None else set()
        self.chunk_size = chunk_size
        self._ids: dict[str, int] = {}
        self._ids_sig: str | None = None
        self._cost: dict[str, float] = {}  # seconds the last check of each name took

    def visible(self, ns: Mapping[str, Any]) -> list[str]:
        return [n for n in ns if not n.startswith("_") and n not in SKIP_NAMES and n not in self.hidden]

    # -- capture ---------------------------------------------------------
    def capture(self, ns: dict, code: str, prev: Manifest | None) -> Capture:
        t0 = time.perf_counter()
        live = self.visible(ns)
        live_set = set(live)
        hashed = [0]
        hash_memo: dict[tuple[int, int], list[tuple[str, int]]] = {}
        walks: dict[str, _Walk] = {}
        budget = [WALK_LIMIT]

        cost: dict[str, float] = {}

        def walk(n: str) -> _Walk:
            if n not in walks:
                t = time.perf_counter()
                walks[n] = _Walk(ns[n], ns, budget)
                cost[n] = cost.get(n, 0.0) + time.perf_counter() - t
            return walks[n]

        ids_known = prev is not None and self._ids_sig == prev.signature()
        reason: str | None = None
        if prev is None:
            reason = "no previous state"
        elif not ids_known:
            reason = "the previous state was not captured by this process"
        else:
            names, reason = analyse_code(code)
        if reason is not None:
            cands = set(live)
        else:
            cands, reason = self._touched(ns, names & live_set, walk)
            cands &= live_set
            if reason is not None:
                cands = set(live)
            else:
                cands |= {n for n in live if n not in prev}
                cands |= {n for n in live if self._ids.get(n) != id(ns[n])}
                cands |= self._small(prev, live_set)
        rebound = {n for n in live if ids_known and n in self._ids and self._ids[n] != id(ns[n])}

        # Names sharing a stored group with a candidate are walked too, so a
        # group is never split by looking at only part of it.
        prev_groups = prev.groups() if prev is not None else {}
        walkset = set(cands)
        for n in cands:
            if prev is not None and n in prev and prev[n].ref:
                walkset.update(m for m in prev_groups[prev[n].ref] if m in live_set)
        comps = self._components(sorted(walkset), walk)

        payloads: dict[str, _Payload | str] = {}  # name -> payload, or why it cannot be pickled

        def fingerprint(n: str) -> _Payload | str:
            if n not in payloads:
                roots = _array_roots(walk(n).arrays)
                t = time.perf_counter()
                payloads[n] = self._pickle((ns[n],), ns, hash_memo, hashed, roots)
                cost[n] = cost.get(n, 0.0) + time.perf_counter() - t
            return payloads[n]

        for n in sorted(cands):
            fingerprint(n)

        entries: dict[str, VarEntry] = {}
        changed: set[str] = set()
        written = 0
        for comp in comps:
            prev_refs = {prev[n].ref for n in comp if prev is not None and n in prev}
            fresh = [n for n in comp if n in payloads]
            if prev is not None and len(prev_refs) == 1 and all(n in prev for n in comp):
                ref = next(iter(prev_refs))
                same = ref and sorted(prev_groups.get(ref, [])) == comp
                if same and all(isinstance(payloads[n], _Payload) and payloads[n].fp == prev[n].fp
                                for n in fresh):
                    entries.update({n: prev[n] for n in comp})
                    changed.update(n for n in comp if n in rebound)
                    continue
            # The group is new or changed: every member must be pickled to store it.
            for n in comp:
                fingerprint(n)
            ok = [n for n in comp if isinstance(payloads[n], _Payload)]
            ref = ""
            if ok:
                if len(ok) == 1:
                    group = payloads[ok[0]]
                else:
                    roots = _array_roots([a for n in ok for a in walk(n).arrays])
                    group = self._pickle(tuple(ns[n] for n in ok), ns, hash_memo, hashed, roots)
                if isinstance(group, _Payload):
                    ref, w = self._store(ok, group)
                    written += w
                else:  # together they fail though each pickles alone: store singly
                    for n in ok:
                        r, w = self._store([n], payloads[n])
                        written += w
                        entries[n] = self._entry(n, ns[n], payloads[n], r)
                    ok = []
            for n in comp:
                p = payloads[n]
                if n not in entries:
                    entries[n] = self._entry(n, ns[n], p, ref if n in ok else "")
                if prev is None or n not in prev or prev[n].fp != entries[n].fp or n in rebound:
                    changed.add(n)
        for n in live:
            if n not in entries:
                entries[n] = prev[n]  # type: ignore[index]  # untouched: prev holds it
        manifest = Manifest({n: entries[n] for n in live})
        deleted = set(prev) - live_set if prev is not None else set()
        self._cost.update(cost)
        self._remember(ns, live, manifest)
        return Capture(manifest=manifest, changed=changed, deleted=deleted, bytes_written=written,
                       bytes_hashed=hashed[0], candidates=cands, full_scan_reason=reason,
                       seconds=time.perf_counter() - t0)

    def _touched(self, ns: dict, start: set[str], walk: Callable[[str], _Walk]) -> tuple[set[str], str | None]:
        """Close ``start`` over the code it can run: notebook functions (their
        global names), methods of notebook classes, closures, defaults."""
        seen: set[str] = set()
        todo = list(start)
        codes_done: set[int] = set()
        while todo:
            n = todo.pop()
            if n in seen or n not in ns:
                continue
            seen.add(n)
            for fn in walk(n).functions if self._walkable(ns, n) else []:
                if id(fn.__code__) in codes_done:
                    continue
                codes_done.add(id(fn.__code__))
                used = set(_code_names(fn.__code__))
                if "sys" in used and "modules" in used:
                    used.add("__main__")  # sys.modules['__main__']: conservatively
                for g in used:
                    if g in DYNAMIC_NAMES or g in DYNAMIC_ATTRS:
                        return seen, f"{fn.__qualname__} uses {g}"
                    if g in ns and g not in seen:
                        todo.append(g)
        return seen, None

    def _walkable(self, ns: dict, n: str) -> bool:
        return not (n.startswith("_") or n in SKIP_NAMES or n in self.hidden)

    def _small(self, prev: Manifest, live: set[str]) -> set[str]:
        """Small objects are re-fingerprinted every cell: cheaper than any
        analysis, and it catches mutation through references we cannot see.
        Objects that proved slow to check are left to the analysis instead."""
        out: set[str] = set()
        total = 0
        for n, e in sorted(prev.items(), key=lambda kv: kv[1].size_bytes):
            if e.size_bytes > SMALL_ONE or total + e.size_bytes > SMALL_TOTAL:
                break
            if self._cost.get(n, 0.0) > SMALL_COST:
                continue
            if n in live:
                out.add(n)
                total += e.size_bytes
        return out

    def _components(self, names: list[str], walk: Callable[[str], _Walk]) -> list[list[str]]:
        parent = {n: n for n in names}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        owner: dict[int, str] = {}
        for n in names:
            for i in walk(n).ids:
                o = owner.setdefault(i, n)
                if o != n:
                    parent[find(n)] = find(o)
        comps: dict[str, list[str]] = {}
        for n in names:
            comps.setdefault(find(n), []).append(n)
        return [sorted(c) for c in comps.values()]

    def _pickle(self, objs: tuple, ns: dict, memo: dict, hashed: list[int],
                roots: dict[int, Any]) -> _Payload | str:
        buffers: list[pickle.PickleBuffer] = []
        f = io.BytesIO()
        try:
            _Pickler(f, ns, buffers, roots).dump(objs)
        except RecursionError:
            return "cannot pickle: the object graph is too deep"
        except Exception as e:
            return _why_unpicklable(objs, e)
        main = f.getvalue()
        hashed[0] += len(main)
        main_digest = digest(main)
        raws = [b.raw() for b in buffers]
        buffer_keys = []
        for mv in raws:
            # Memoised by exporter within one capture (no cell runs meanwhile,
            # so no buffer mutates); the entry holds the exporter so its id
            # cannot be reused by a later temporary.
            k = (id(mv.obj), mv.nbytes)
            if k not in memo:
                memo[k] = (mv.obj, self._chunk_keys(mv, hashed))
            buffer_keys.append(memo[k][1])
        fp = digest("|".join([main_digest, *(k for b in buffer_keys for k, _ in b)]).encode())
        return _Payload(main, main_digest, raws, buffer_keys, fp, len(main) + sum(m.nbytes for m in raws))

    def _chunk_keys(self, mv: memoryview, hashed: list[int]) -> list[tuple[str, int]]:
        hashed[0] += mv.nbytes
        return chunk_keys(mv, self.chunk_size)

    def _store(self, names: list[str], p: _Payload | str) -> tuple[str, int]:
        assert isinstance(p, _Payload)
        main_keys = chunk_keys(memoryview(p.main), self.chunk_size, content_defined=True)
        written = sum(self.objects.put_chunks(mv, keys) for mv, keys in
                      [(memoryview(p.main), main_keys), *zip(p.buffers, p.buffer_keys)])
        header = json.dumps({"v": 1, "names": names, "main": main_keys, "buffers": p.buffer_keys},
                            separators=(",", ":")).encode()
        ref, w = self.objects.put_new(header)
        return ref, written + w

    def _entry(self, n: str, obj: Any, p: _Payload | str, ref: str) -> VarEntry:
        if isinstance(p, _Payload):
            return VarEntry(n, _qualname(type(obj)), p.nbytes, _summary(obj), _json_value(obj),
                            True, None, ref, p.fp)
        # Unpicklable: identity is the best fingerprint we have.
        return VarEntry(n, _qualname(type(obj)), _sizeof(obj), _summary(obj), None, False, p, "",
                        f"!{id(obj):x}")

    def _remember(self, ns: dict, live: list[str], manifest: Manifest) -> None:
        self._ids = {n: id(ns[n]) for n in live if n in ns}
        self._ids_sig = manifest.signature()

    # -- restore ---------------------------------------------------------
    def restore(self, target: Manifest, ns: dict, live: Manifest | None,
                progress: Callable[[int, int], None] | None = None, *,
                verify: bool = False) -> RestoreReport:
        """Make ``ns`` hold the state ``target``.  Names whose entry equals the
        live manifest's (same group ref and fingerprint, same object still
        bound) are left alone; ``verify=True`` also re-fingerprints those, for
        when ``ns`` may have changed since ``live`` was captured."""
        report = RestoreReport()
        ids_known = live is not None and self._ids_sig == live.signature()
        for n in self.visible(ns):
            if n not in target:
                del ns[n]
                report.deleted.append(n)
        load_refs: set[str] = set()
        memo: dict = {}
        for n, e in target.items():
            le = live.get(n) if live is not None else None
            same = (le is not None and n in ns and le.ref == e.ref and le.fp == e.fp
                    and (not ids_known or self._ids.get(n) == id(ns[n])))
            if same and verify and e.restorable:
                p = self._pickle((ns[n],), ns, memo, [0], _array_roots(_Walk(ns[n], ns, [WALK_LIMIT]).arrays))
                same = isinstance(p, _Payload) and p.fp == e.fp
            if not e.restorable:
                if same:
                    report.unchanged.append(n)
                else:
                    ns.pop(n, None)
                    report.not_restored[n] = e.reason or "not restorable"
            elif not same:
                load_refs.add(e.ref)
        groups = target.groups()
        headers: dict[str, dict] = {}
        for ref in sorted(load_refs):
            try:
                headers[ref] = json.loads(self.objects.get(ref))
            except Exception as exc:
                for n in groups[ref]:
                    ns.pop(n, None)
                    report.not_restored[n] = f"cannot load: {exc}"
        total = sum(n for h in headers.values() for _, n in h["main"] + [x for b in h["buffers"] for x in b])
        done = [0, total, progress]
        for ref, h in headers.items():
            try:
                objs = self._load(h, ns, done)
            except Exception as exc:
                for n in groups[ref]:
                    ns.pop(n, None)
                    report.not_restored[n] = f"cannot load: {type(exc).__name__}: {exc}"
                continue
            for n in groups[ref]:
                ns[n] = objs[n]
                report.restored.append(n)
        report.unchanged = sorted(n for n in target if n not in report.restored
                                  and n not in report.not_restored)
        report.restored.sort()
        report.deleted.sort()
        self._remember(ns, [n for n in target if n in ns], target)
        return report

    def _load(self, header: dict, globals_: dict | None, done: list | None = None,
              isolated: bool = False) -> dict[str, Any]:
        def tick(n: int) -> None:
            if done is not None:
                done[0] += n
                if done[2] is not None:
                    done[2](done[0], done[1])
        main = self.objects.read_chunks(header["main"], tick)
        buffers = [self.objects.read_chunks(b, tick) for b in header["buffers"]]
        token = _LOAD_GLOBALS.set(globals_)
        try:
            loader = _IsolatedUnpickler if isolated else pickle.Unpickler
            objs = loader(io.BytesIO(main), buffers=buffers).load()
        finally:
            _LOAD_GLOBALS.reset(token)
        return dict(zip(header["names"], objs))

    # -- inspection ------------------------------------------------------
    def load_value(self, entry: VarEntry, globals_: dict | None = None) -> Any:
        """The value of a past entry, without touching any namespace.
        Notebook functions in it get ``globals_`` (default: a private dict)."""
        if not entry.restorable or not entry.ref:
            raise ValueError(f"{entry.name} was not stored: {entry.reason}")
        header = json.loads(self.objects.get(entry.ref))
        return self._load(header, globals_, isolated=True)[entry.name]

    def frame_path(self, entry: VarEntry) -> Path | None:
        """A Parquet file holding the DataFrame of ``entry`` (written on first
        request, inside the objects folder), for DuckDB's ``read_parquet``."""
        if not entry.restorable or not entry.type.endswith("DataFrame"):
            return None
        if not entry.fp or entry.fp.strip("0123456789abcdef"):
            return None  # the fp names a file: only ever a hex digest
        path = self.objects.root / "frames" / f"{entry.fp}.parquet"
        if path.is_file():
            return path
        try:
            df = self.load_value(entry)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
            os.close(fd)
            try:
                df.to_parquet(tmp)
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except Exception:
            # Frames Parquet cannot hold (mixed-type object columns, non-string
            # column names...) are still loadable through load_value.
            return None
        return path


def _sizeof(obj: Any) -> int:
    try:
        return sys.getsizeof(obj)
    except Exception:
        return 0


def _why_unpicklable(objs: tuple, exc: Exception) -> str:
    t = type(objs[0]) if len(objs) == 1 else tuple
    return f"cannot pickle {_qualname(t)}: {type(exc).__name__}: {exc}"[:300]
