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
and another allocated at the same address under the same name between two
looks is not seen here. The cell's analysis names what its own code binds,
small objects are re-checked by content (recheck.py) and large ones that
take weak references are watched by one (Snapshotter._look); what is left
is a large object of a type without weak references (bytes, list, dict)
rebound twice between two cells by code no cell names."""

from __future__ import annotations

import ctypes
import sys
import sysconfig

__all__ = ["Bindings", "table_look"]

_PTR = 8
_W = 2 * _PTR  # bytes an entry of a str-keyed table takes: key and value pointers
_MAX_DIFF = 512  # entries that differ before the full pass is cheaper than halving


class Bindings:
    """The bindings of one namespace at one moment: names and the ids of
    their objects, never the objects. ``since(ns)`` gives the bindings now
    and the names bound anew or rebound, and unbound, in between."""

    __slots__ = ("_raw", "_kmap", "_names", "_ids", "_by_name")

    def __init__(self, raw: bytes | None, kmap: dict[int, str] | None,
                 names: list[str] | None, ids: list[int] | None) -> None:
        self._raw, self._kmap = raw, kmap  # the table's entries
        self._names, self._ids = names, ids  # the portable form
        self._by_name: dict[str, int] | None = None

    @classmethod
    def of(cls, ns: dict, private: bool = False) -> Bindings:
        """``private``: ns is a copy no other code can reach (else one is made)."""
        copy = ns if private else dict.copy(ns)  # a plain dict: its layout is what is read
        return _full(copy, _entries(copy) if _FAST else None, None)

    def since(self, ns: dict, private: bool = False) -> tuple[Bindings, set[str], set[str]]:
        """(bindings now, names bound or rebound since, names unbound since)."""
        copy = ns if private else dict.copy(ns)
        got = _entries(copy) if _FAST else None
        if got is not None and self._raw is not None:
            quick = _table_since(self, got, copy)
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
                keys, vals = _pairs(self._raw)
                self._by_name = {self._kmap[k]: v for k, v in zip(keys, vals) if k}
            else:
                assert self._names is not None and self._ids is not None
                self._by_name = dict(zip(self._names, self._ids))
        return self._by_name


def _full(copy: dict, got: bytes | None, kmap: dict[int, str] | None) -> Bindings:
    if got is None:
        return Bindings(None, None, list(copy), list(map(id, copy.values())))
    if kmap is None or len(kmap) > 2 * len(copy) + 1024:  # forget names long unbound
        kmap = {}
    kmap.update(zip(map(id, copy), copy))
    return Bindings(got, kmap, None, None)


def _table_since(old: Bindings, raw: bytes, copy: dict) -> tuple[Bindings, set[str], set[str]] | None:
    """The fast look: entries compared by memcmp; None when the table was
    rebuilt (entries moved) or too much changed, for the full pass."""
    prev, kmap = old._raw, old._kmap
    assert prev is not None and kmap is not None
    if len(raw) < len(prev):
        return None
    diffs = _differing(prev, raw)
    if diffs is None:
        return None
    bound: set[str] = set()
    unbound: dict[str, int] = {}  # name -> the id it was bound to
    for i in diffs:
        k_old, v_old = _entry(prev, i)
        k_new = _entry(raw, i)[0]
        if k_old == k_new:
            bound.add(kmap[k_new])
        elif k_new == 0:  # deleted: the entry stays, empty, until the table is rebuilt
            unbound[kmap[k_old]] = v_old
        else:
            return None
    for i in range(len(prev) // _W, len(raw) // _W):  # appended since
        k_new, v_new = _entry(raw, i)
        if k_new:
            name = kmap.get(k_new)
            if name is None:
                name = ctypes.cast(k_new, ctypes.py_object).value  # alive: ``copy`` holds it
                kmap[k_new] = name
            if unbound.get(name) == v_new:  # deleted and bound again to the same object
                del unbound[name]
            else:
                bound.add(name)
    return Bindings(raw, kmap, None, None), bound, set(unbound) - bound


def _entry(raw: bytes, i: int) -> tuple[int, int]:
    """The key and value pointers of entry ``i``."""
    return int.from_bytes(raw[i * _W:i * _W + _PTR], sys.byteorder), \
        int.from_bytes(raw[i * _W + _PTR:(i + 1) * _W], sys.byteorder)


def _differing(a: bytes, b: bytes) -> list[int] | None:
    """Indices of the entries (_W bytes each) where ``a`` and the same
    length of ``b`` differ, halving what memcmp says differs (``startswith``
    with a memoryview compares in place: slicing would copy, and memoryviews
    compare item by item); None past _MAX_DIFF."""
    out: list[int] = []
    todo = [(0, len(a) // _W)]
    ma = memoryview(a)
    while todo:
        lo, hi = todo.pop()
        if b.startswith(ma[lo * _W:hi * _W], lo * _W):
            continue
        if hi - lo <= 4:
            out.extend(i for i in range(lo, hi) if not b.startswith(ma[i * _W:(i + 1) * _W], i * _W))
            if len(out) > _MAX_DIFF:
                return None
            continue
        mid = (lo + hi) // 2
        todo += [(mid, hi), (lo, mid)]
    return out


def _pairs(raw: bytes) -> tuple[list[int], list[int]]:
    words = memoryview(raw).cast("Q").tolist()
    return words[0::2], words[1::2]


# -- the table layout (CPython 3.11-3.13, Include/internal/pycore_dict.h) -----
# PyDictObject ends with ma_keys, ma_values: counted from the end, a build
# with a longer object header (--with-trace-refs) reads the right field
_MA_KEYS = dict.__basicsize__ - 2 * _PTR
_DK_HEADER = 4 * _PTR     # refcnt, log2 size/index bytes/kind/version, usable, nentries
_STR_KEYS = 1  # dk_kind of a table whose keys are all str: entries (key, value)


def _entries(d: dict) -> bytes | None:
    """The entry table of ``d`` (a dict no other code can reach) as bytes,
    16 per entry; None when its header does not look like one, or
    when a key is not a str (a general table: the portable pass then, which
    holds no key; this module's key map holds only strings)."""
    keys = ctypes.c_void_p.from_address(id(d) + _MA_KEYS).value
    if not keys:
        return None
    head = ctypes.string_at(keys, _DK_HEADER)
    log2_size, log2_index, kind = head[_PTR], head[_PTR + 1], head[_PTR + 2]
    n = int.from_bytes(head[3 * _PTR:], sys.byteorder)
    if kind != _STR_KEYS or not log2_size <= 40 or not log2_size <= log2_index <= log2_size + 3 \
            or not 0 <= n <= 1 << log2_size:
        return None
    return ctypes.string_at(keys + _DK_HEADER + (1 << log2_index), n * _W)


def table_look() -> bool:
    """Whether this interpreter's dicts are read through their entry table:
    CPython 3.11-3.13 with the GIL, 64-bit, and a layout that reads back the
    ids of dicts made here (with and without deleted entries, str and other keys)."""
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13) \
            or ctypes.sizeof(ctypes.c_void_p) != _PTR or sysconfig.get_config_var("Py_GIL_DISABLED") \
            or dict.__basicsize__ != 6 * _PTR:  # a header other than refcount and type
        return False
    samples: list[dict] = [{f"k{i}": object() for i in range(40)}, {}]
    del samples[0]["k3"]
    return all(_reads_back(d.copy()) for d in samples) and _entries({1: 2}) is None


def _reads_back(d: dict) -> bool:
    got = _entries(d)
    if got is None:
        return False
    keys, vals = _pairs(got)
    live = [(k, v) for k, v in zip(keys, vals) if k]
    return live == list(zip(map(id, d), map(id, d.values()))) and all(
        v == 0 for k, v in zip(keys, vals) if not k)


_FAST = table_look()
