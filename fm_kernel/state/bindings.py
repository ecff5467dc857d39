"""Which object each name of a namespace is bound to, and what changed since.

A capture must notice names bound, rebound or unbound by code the cell's
analysis cannot see: a library writing into ``__main__``, a flow thread's
``global``. Dicts tell nobody about writes before Python 3.12, so that takes
a look at every binding every cell, and IPython adds ``_iN`` every cell: the
namespace grows with the session, and a look made of Python-level passes
(names, ids, a compare) cost 1.3 ms a cell by cell 20,000 (bench/soak.py).

On CPython 3.11-3.13 the look is made on the dict's entry table instead: a
private copy of the namespace (one C call, atomic under the GIL; the copy
holds the objects for the microseconds of the look only, so nothing a cell
deletes is kept alive), read as bytes and compared with the last look's bytes
by ``memcmp``, halving to reach the few entries that differ. An entry is a
key pointer and a value pointer; which name a key pointer is stays known
because this module holds the key strings it has seen (strings: holding them
changes nothing for the user, and it keeps their addresses from being reused).
Anything the fast look does not understand — a table that was rebuilt, a
layout that does not verify at import, another interpreter — takes the
portable pass over names and ids, which is always right.

Ids, not references, are compared (as before this module): an object freed
and another allocated at the same address under the same name in one cell is
not seen here; the cell's analysis names what its own code binds."""

from __future__ import annotations

import ctypes
import sys
import sysconfig

__all__ = ["Bindings", "table_look"]

_PTR = 8
_MAX_DIFF = 512  # entries that differ before the full pass is cheaper than halving


class Bindings:
    """The bindings of one namespace at one moment: names and the ids of
    their objects, never the objects. ``since(ns)`` gives the bindings now
    and the names bound anew or rebound, and unbound, in between."""

    __slots__ = ("_raw", "_width", "_kmap", "_names", "_ids", "_by_name")

    def __init__(self, raw: bytes | None, width: int, kmap: dict[int, str] | None,
                 names: list[str] | None, ids: list[int] | None) -> None:
        self._raw, self._width, self._kmap = raw, width, kmap  # the table's entries
        self._names, self._ids = names, ids  # the portable form
        self._by_name: dict[str, int] | None = None

    @classmethod
    def of(cls, ns: dict) -> Bindings:
        copy = ns.copy()
        return _full(copy, _entries(copy) if _FAST else None, None)

    def since(self, ns: dict) -> tuple[Bindings, set[str], set[str]]:
        """(bindings now, names bound or rebound since, names unbound since)."""
        copy = ns.copy()
        got = _entries(copy) if _FAST else None
        if got is not None and self._raw is not None and got[1] == self._width:
            quick = _table_since(self, got[0], copy)
            if quick is not None:
                return quick
        now = _full(copy, got, self._kmap)
        before, after = self.by_name(), now.by_name()
        bound = {n for n, _ in after.items() - before.items()}
        return now, bound, set(before.keys() - after.keys())

    def by_name(self) -> dict[str, int]:
        """{name: id} (O(names): the rare full pass only)."""
        if self._by_name is None:
            if self._raw is not None:
                assert self._kmap is not None
                keys, vals = _pairs(self._raw, self._width)
                self._by_name = {self._kmap[k]: v for k, v in zip(keys, vals) if k}
            else:
                assert self._names is not None and self._ids is not None
                self._by_name = dict(zip(self._names, self._ids))
        return self._by_name


def _full(copy: dict, got: tuple[bytes, int] | None, kmap: dict[int, str] | None) -> Bindings:
    if got is None:
        return Bindings(None, 0, None, list(copy), list(map(id, copy.values())))
    if kmap is None or len(kmap) > 2 * len(copy) + 1024:  # forget names long unbound
        kmap = {}
    kmap.update(zip(map(id, copy), copy))
    return Bindings(got[0], got[1], kmap, None, None)


def _table_since(old: Bindings, raw: bytes, copy: dict) -> tuple[Bindings, set[str], set[str]] | None:
    """The fast look: entries compared by memcmp; None when the table was
    rebuilt (entries moved) or too much changed, for the full pass."""
    w, prev, kmap = old._width, old._raw, old._kmap
    assert prev is not None and kmap is not None
    if len(raw) < len(prev):
        return None
    diffs = _differing(prev, raw, w)
    if diffs is None:
        return None
    ko, kn = w - 2 * _PTR, w - _PTR  # offsets of the key and the value in an entry
    bound: set[str] = set()
    unbound: set[str] = set()
    for i in diffs:
        k_old = int.from_bytes(prev[i * w + ko:i * w + kn], sys.byteorder)
        k_new = int.from_bytes(raw[i * w + ko:i * w + kn], sys.byteorder)
        if k_old == k_new:
            bound.add(kmap[k_new])
        elif k_new == 0:  # deleted: the entry stays, empty, until the table is rebuilt
            unbound.add(kmap[k_old])
        else:
            return None
    for i in range(len(prev) // w, len(raw) // w):  # appended since
        k_new = int.from_bytes(raw[i * w + ko:i * w + kn], sys.byteorder)
        if k_new:
            name = kmap.get(k_new)
            if name is None:
                name = ctypes.cast(k_new, ctypes.py_object).value  # alive: ``copy`` holds it
                kmap[k_new] = name
            bound.add(name)
    return Bindings(raw, w, kmap, None, None), bound, unbound - bound


def _differing(a: bytes, b: bytes, w: int) -> list[int] | None:
    """Indices of the entries (``w`` bytes each) where ``a`` and the same
    length of ``b`` differ, halving what memcmp says differs (``startswith``
    with a memoryview compares in place: slicing would copy, and memoryviews
    compare item by item); None past _MAX_DIFF."""
    out: list[int] = []
    todo = [(0, len(a) // w)]
    ma = memoryview(a)
    while todo:
        lo, hi = todo.pop()
        if b.startswith(ma[lo * w:hi * w], lo * w):
            continue
        if hi - lo <= 4:
            out.extend(i for i in range(lo, hi) if not b.startswith(ma[i * w:(i + 1) * w], i * w))
            if len(out) > _MAX_DIFF:
                return None
            continue
        mid = (lo + hi) // 2
        todo += [(mid, hi), (lo, mid)]
    return out


def _pairs(raw: bytes, w: int) -> tuple[list[int], list[int]]:
    words = memoryview(raw).cast("Q").tolist()
    step = w // _PTR
    return words[step - 2::step], words[step - 1::step]


# -- the table layout (CPython 3.11-3.13, Include/internal/pycore_dict.h) -----
_MA_KEYS = 4 * _PTR       # PyDictObject: refcnt, type, ma_used, version tag, *ma_keys*
_DK_HEADER = 4 * _PTR     # refcnt, log2 size/index bytes/kind/version, usable, nentries
_WIDTH = {0: 3 * _PTR, 1: 2 * _PTR}  # general entries (hash, key, value); str keys only (key, value)


def _entries(d: dict) -> tuple[bytes, int] | None:
    """The entry table of ``d`` (a dict no other code can reach) as bytes and
    the width of one entry; None when its header does not look like one."""
    keys = ctypes.c_void_p.from_address(id(d) + _MA_KEYS).value
    if not keys:
        return None
    head = ctypes.string_at(keys, _DK_HEADER)
    log2_size, log2_index, kind = head[_PTR], head[_PTR + 1], head[_PTR + 2]
    n = int.from_bytes(head[3 * _PTR:], sys.byteorder)
    if kind not in _WIDTH or not log2_size <= 40 or not log2_size <= log2_index <= log2_size + 3 \
            or not 0 <= n <= 1 << log2_size:
        return None
    w = _WIDTH[kind]
    return ctypes.string_at(keys + _DK_HEADER + (1 << log2_index), n * w), w


def table_look(*, verify: bool = True) -> bool:
    """Whether this interpreter's dicts are read through their entry table:
    CPython 3.11-3.13 with the GIL, 64-bit, and a layout that reads back the
    ids of dicts made here (with and without deleted entries, str and other keys)."""
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13) \
            or ctypes.sizeof(ctypes.c_void_p) != _PTR or sysconfig.get_config_var("Py_GIL_DISABLED"):
        return False
    if not verify:
        return True
    samples: list[dict] = [{f"k{i}": object() for i in range(40)}, {i: [i] for i in range(9)}, {}]
    del samples[0]["k3"], samples[1][4]
    return all(_reads_back(d.copy()) for d in samples)


def _reads_back(d: dict) -> bool:
    got = _entries(d)
    if got is None:
        return False
    keys, vals = _pairs(*got)
    live = [(k, v) for k, v in zip(keys, vals) if k]
    return live == list(zip(map(id, d), map(id, d.values()))) and all(
        v == 0 for k, v in zip(keys, vals) if not k)


_FAST = table_look()
