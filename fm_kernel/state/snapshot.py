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

import io
import json
import os
import pickle
import re
import reprlib
import sys
import tempfile
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .analysis import DYNAMIC_ATTRS, DYNAMIC_NAMES, WALK_LIMIT, code_names, ObjectWalk, analyse_code
from ..record import trust
from ..record.objects import ObjectFiles, chunk_keys, digest
from .pickling import LOAD_GLOBALS, array_roots, IsolatedUnpickler, Payload, SnapshotPickler, qualname
from .bindings import Bindings
from .capturing import CaptureRun
from .recheck import SMALL_ONE, Rechecks
from .manifest import Manifest, VarEntry
from .restoring import Aside, Restore, ticker
from .surrogate import state_fingerprint

__all__ = ["Snapshotter", "Manifest", "VarEntry", "Capture", "RestoreReport", "analyse_code"]

CHUNK = 2 * 1024 * 1024  # 1% of a 100 MB array dirties at most 2 chunks (4%)
VALUE_MAX = 1024         # JSON values kept in the manifest up to this size
SKIP_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython",
                        "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh", "_exit_code"})
_IPY_NUMBERED = re.compile(r"_i?\d+")  # _5 (output 5), _i5 (input 5)


def user_name(n: str) -> bool:
    """Whether ``n`` is the user's, so part of a state.  IPython's own names
    (output/input history, ``In``/``Out``, dunders) are kept out; a user's
    ``_fmt`` or ``import random as _r`` is kept in, because a resumed flow or a
    rewind that lacks it fails with NameError (docs/time-travel.md)."""
    if n in SKIP_NAMES or (n.startswith("__") and n.endswith("__")):
        return False
    return not _IPY_NUMBERED.fullmatch(n)




@dataclass
class Capture:
    manifest: Manifest
    changed: set[str]
    deleted: set[str]
    bytes_written: int = 0
    bytes_hashed: int = 0            # bytes fingerprinted: proves untouched buffers were skipped
    candidates: set[str] = field(default_factory=set)
    touched: set[str] | None = None  # names whose entries were made anew; None: all of them
    full_scan_reason: str | None = None  # why every name was checked, if it was
    seconds: float = 0.0


@dataclass
class RestoreReport:
    restored: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    not_restored: dict[str, str] = field(default_factory=dict)  # name -> why
    kept: list[str] = field(default_factory=list)       # of not_restored: the live object stays bound
    untracked: list[str] = field(default_factory=list)  # kept as they are now, not tracked
    rebuilt: list[str] = field(default_factory=list)    # of restored: by re-running their statement
    patched: list[str] = field(default_factory=list)    # of restored: live arrays patched in place
    read_bytes: int = 0  # bytes read from the store (a patch reads only the chunks that differ)
    manifest: Manifest | None = None  # the state the namespace now holds (kept objects included)


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
    if hasattr(obj, "item") and getattr(obj, "shape", None) == () and qualname(t).startswith("numpy."):
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
                 chunk_size: int = CHUNK, gate: trust.Gate = trust.OWN) -> None:
        self.objects = objects
        self.gate = gate  # a history's objects load only through its trust gate
        self.hidden = hidden if hidden is not None else set()
        self.chunk_size = chunk_size
        # what ns's names were bound to at the last capture or restore, and of which state
        self._bound: Bindings | None = None
        self._ids_sig: str | None = None
        self._large: dict[str, weakref.ref] = {}  # large objects' weak references (_watch)
        self._pending: set[str] = set()  # bound by others during a restore: for the next capture
        self.rechecks = Rechecks()  # small objects fingerprinted again in turn (recheck.py)
        self.aside = Aside()  # unreplaceable objects restores took out of the namespace

    def visible(self, ns: Mapping[str, Any]) -> list[str]:
        return [n for n in ns if self._walkable(ns, n)]

    # -- capture ---------------------------------------------------------
    def capture(self, ns: dict, code: str, prev: Manifest | None) -> Capture:
        """The state of ``ns`` after a cell ran ``code``, given the state before (capturing.py)."""
        return CaptureRun(self, ns, prev).run(code)

    def _touched(self, ns: dict, start: set[str], walk: Callable[[str], ObjectWalk]) -> tuple[set[str], str | None]:
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
                used = set(code_names(fn.__code__))
                if "sys" in used and "modules" in used:
                    used.add("__main__")  # sys.modules['__main__']: conservatively
                for g in used:
                    if g in DYNAMIC_NAMES or g in DYNAMIC_ATTRS:
                        return seen, f"{fn.__qualname__} uses {g}"
                    if g in ns and g not in seen:
                        todo.append(g)
        return seen, None

    def _walkable(self, ns: Mapping[str, Any], n: str) -> bool:
        # globals()[1] = 2 is allowed: such a key is not a name, and not recorded
        return isinstance(n, str) and user_name(n) and n not in self.hidden

    def _components(self, names: list[str], walk: Callable[[str], ObjectWalk]) -> list[list[str]]:
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
                roots: dict[int, Any], *, stage: bool = False) -> Payload | str:
        """Pickle and fingerprint ``objs``. ``stage``: a capture's candidates,
        whose new chunks start being written while the rest is hashed
        (ObjectFiles.stage_chunks); inspections and checks write nothing."""
        buffers: list[pickle.PickleBuffer] = []
        f = io.BytesIO()
        try:
            SnapshotPickler(f, ns, buffers, roots).dump(objs)
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
                memo[k] = (mv.obj, self._chunk_keys(mv, hashed, stage))
            buffer_keys.append(memo[k][1])
        fp = digest("|".join([main_digest, *(k for b in buffer_keys for k, _ in b)]).encode())
        return Payload(main, main_digest, raws, buffer_keys, fp, len(main) + sum(m.nbytes for m in raws))

    def _chunk_keys(self, mv: memoryview, hashed: list[int], stage: bool = False) -> list[tuple[str, int]]:
        hashed[0] += mv.nbytes
        if stage:
            return self.objects.stage_chunks(mv, self.chunk_size)
        return chunk_keys(mv, self.chunk_size)

    def _store(self, names: list[str], p: Payload | str) -> tuple[str, int]:
        assert isinstance(p, Payload)
        main_keys = chunk_keys(memoryview(p.main), self.chunk_size, content_defined=True)
        written = sum(self.objects.put_chunks(mv, keys) for mv, keys in
                      [(memoryview(p.main), main_keys), *zip(p.buffers, p.buffer_keys)])
        header = json.dumps({"v": 1, "names": names, "main": main_keys, "buffers": p.buffer_keys},
                            separators=(",", ":")).encode()
        ref, w = self.objects.put_new(header)
        return ref, written + w

    def _entry(self, n: str, obj: Any, p: Payload | str, ref: str, ns: dict) -> VarEntry:
        if isinstance(p, Payload):
            return VarEntry(n, qualname(type(obj)), p.nbytes, _summary(obj), _json_value(obj),
                            True, None, ref, p.fp)
        key = self.object_key(obj, ns)
        return VarEntry(n, qualname(type(obj)), _sizeof(obj), _summary(obj), None, False, p, "",
                        key, tracked=key.startswith("~"))

    def content_fp(self, obj: Any, ns: dict) -> str | None:
        """The fingerprint capture gives a picklable object (None if it does not pickle)."""
        p = self._pickle((obj,), ns, {}, [0], array_roots(ObjectWalk(obj, ns, [WALK_LIMIT]).arrays))
        return p.fp if isinstance(p, Payload) else None

    def main_stream(self, obj: Any, ns: dict) -> bytes | None:
        """The pickle stream of ``obj`` alone as capture stores it, its
        out-of-band buffers left out (None if it does not pickle)."""
        buffers: list[pickle.PickleBuffer] = []
        f = io.BytesIO()
        try:
            SnapshotPickler(f, ns, buffers, array_roots(ObjectWalk(obj, ns, [WALK_LIMIT]).arrays)).dump((obj,))
        except Exception:
            return None
        finally:
            buffers.clear()  # they hold the object: a patch counts its references
        return f.getvalue()

    def object_key(self, obj: Any, ns: dict) -> str:
        """The fingerprint of an object pickle refuses: "~" and a digest of the
        state it exposes (surrogate.py), or "!" and its identity when it
        exposes none — then it is not tracked."""
        state = state_fingerprint(obj, lambda v: self.content_fp(v, ns))
        return f"~{state}" if state is not None else f"!{id(obj):x}"

    def _remember(self, ns: dict, live: list[str], manifest: Manifest, bound_here: Iterable[str] = ()) -> None:
        """After a restore bound ``bound_here`` (and deleted): ``manifest``
        is what ns holds. What anyone else bound meanwhile (a thread) is left
        for the next capture to look at."""
        now, bound, unbound = self._look(ns)
        self._keep(now, manifest)
        self._watch(bound_here, ns, manifest)
        self._pending = (bound | unbound) - set(bound_here)

    def _look(self, ns: dict, private: bool = False) -> tuple[Bindings, set[str], set[str]]:
        """ns's bindings now, and the names bound (anew or again) and unbound
        since the last look; with no last look, none: the capture then
        checks every name (ids_known is False). ``private``: ns is a copy
        only the caller holds (bindings.py). A large object watched by a
        weak reference that is no longer the one bound counts as bound
        again even when the id is the same (freed, and another made at its
        address: ids alone cannot tell)."""
        if self._bound is None:
            return Bindings.of(ns, private), set(), set()
        now, bound, unbound = self._bound.since(ns, private)
        bound |= {n for n, r in self._large.items() if n in ns and r() is not ns[n]}
        return now, bound | self._pending, unbound

    def _keep(self, bound: Bindings, manifest: Manifest, cost: dict[str, float] | None = None,
              found: set[str] = frozenset()) -> None:
        """What every name of ns was bound to when ``manifest`` was made
        (what checking each name cost the capture that made it, and which
        names only its re-checks found changed)."""
        self._bound, self._ids_sig, self._pending = bound, manifest.signature(), set()
        self.rechecks.captured(cost or {}, found)

    def _watch(self, names: Iterable[str], ns: Mapping[str, Any], manifest: Manifest) -> None:
        """Weak references to the large objects of ``names`` (the rest are
        re-checked by content: recheck.py), dropped for names gone."""
        for n in names:
            e, obj = manifest.get(n), ns.get(n)
            self._large.pop(n, None)
            if e is not None and obj is not None and e.size_bytes > SMALL_ONE:
                try:
                    self._large[n] = weakref.ref(obj)
                except TypeError:
                    pass  # bytes, lists...: ids only

    def idle_recheck(self, ns: dict, live: Manifest, new_round: bool = False) -> bool:
        """One look at small objects while the kernel is idle (recheck.py);
        whether this round has more to look at."""
        if self._ids_sig != live.signature():
            return False  # the next capture checks every name anyway
        return self.rechecks.idle(self, ns, live, new_round)

    # -- restore ---------------------------------------------------------
    def restore(self, target: Manifest, ns: dict, live: Manifest | None,
                progress: Callable[[int, int], None] | None = None, *,
                verify: bool = False) -> RestoreReport:
        """Make ``ns`` hold the state ``target``.  Names whose entry equals the
        live manifest's (same group ref and fingerprint, same object still
        bound) are left alone; ``verify=True`` also re-fingerprints those, for
        when ``ns`` may have changed since ``live`` was captured. Nothing in
        ``ns`` changes until every group to restore is loaded; what cannot be
        replaced keeps its live object (restoring.py)."""
        report = RestoreReport()
        Restore(self, target, ns, live, report).run(progress, verify)
        return report

    def _load(self, header: dict, globals_: dict | None, done: list | None = None,
              isolated: bool = False) -> dict[str, Any]:
        tick = ticker(done)
        main = self.objects.read_chunks(header["main"], tick)
        buffers = [self.objects.read_chunks(b, tick) for b in header["buffers"]]
        token = LOAD_GLOBALS.set(globals_)
        try:
            loader = IsolatedUnpickler if isolated else pickle.Unpickler
            objs = trust.unpickle(self.gate, main, buffers, loader)
        finally:
            LOAD_GLOBALS.reset(token)
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
    return f"cannot pickle {qualname(t)}: {type(exc).__name__}: {exc}"[:300]
