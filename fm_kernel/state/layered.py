"""``Layered``: an ordered map derived from another at the cost of what
changed, for a state's indexes (manifest.py).

Why: each cell's state is the last one with a few names changed. Copied as a
dict, a cell at 10,000 names copied three 10,000-entry dicts, and the 64
recent states kept in memory held 64 copies each: ~2 million references the
garbage collector walked, a ~13 ms gen-1/gen-2 collection in about one cell
of a hundred (the p99 of small cells, docs/benchmarks.md). A ``Layered`` is
a *base* dict shared by every map derived from it, never changed, plus a
small overlay of what differs; once the overlay holds more than ``limit``
names it is folded into a new base (one C-level dict copy), so a lookup is
at most two dict probes and a derive copies at most ``limit`` names.

The order is a dict's: a name set again keeps its place, a new name goes
last, a name deleted and set again goes last.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()
MIN_LIMIT = 64  # overlay names folded into a new base (or sqrt of the size, when larger)


class Layered(Mapping[K, V], Generic[K, V]):
    __slots__ = ("_base", "_set", "_gone", "_new", "_len")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._base: dict[K, V] = dict(items)
        self._set: dict[K, V] = {}     # base names kept in their place, set to another value
        self._gone: frozenset[K] = frozenset()  # base names not held (unless in _new)
        self._new: dict[K, V] = {}     # names after the base's, in the order they came
        self._len = len(self._base)

    # -- reading ---------------------------------------------------------------
    def __getitem__(self, key: K) -> V:
        v = self._new.get(key, _MISSING)
        if v is not _MISSING:
            return v  # type: ignore[return-value]
        v = self._set.get(key, _MISSING)
        if v is not _MISSING:
            return v  # type: ignore[return-value]
        if key in self._gone:
            raise KeyError(key)
        return self._base[key]

    def __contains__(self, key: object) -> bool:
        if key in self._new:
            return True
        return key in self._base and key not in self._gone

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        base: Iterable[K] = self._base
        if self._gone:
            base = itertools.filterfalse(self._gone.__contains__, base)
        return itertools.chain(base, self._new) if self._new else iter(base)

    def values(self):  # type: ignore[override]
        # C-level: Mapping's default calls __getitem__ in Python once a name
        return (self._base if not self.overlay_size() else self.to_dict()).values()

    def items(self):  # type: ignore[override]
        return (self._base if not self.overlay_size() else self.to_dict()).items()

    def overlay_size(self) -> int:
        """Names this map holds apart from its base (bounded by ``limit``)."""
        return len(self._set) + len(self._gone) + len(self._new)

    def shares_base(self, other: Layered) -> bool:
        return self._base is other._base

    def to_dict(self) -> dict[K, V]:
        """A plain dict in the same order (C-level copies, no per-name Python)."""
        d = dict(self._base)
        for k in self._gone:
            del d[k]
        d.update(self._set)
        d.update(self._new)
        return d

    # -- deriving ----------------------------------------------------------------
    def derive(self, sets: Mapping[K, V], deleted: Iterable[K] = ()) -> Layered[K, V]:
        """This map with ``deleted`` gone, then ``sets`` set (dict order
        rules); costs what changed, plus a fold now and then."""
        out = Layered.__new__(Layered)
        base, chg, gone, new = self._base, dict(self._set), set(self._gone), dict(self._new)
        size = self._len
        for k in deleted:
            if k in new:
                del new[k]
                size -= 1
            elif k in base and k not in gone:
                gone.add(k)
                chg.pop(k, None)
                size -= 1
        for k, v in sets.items():
            if k in new:
                new[k] = v
            elif k in base and k not in gone:
                if v is base[k]:
                    chg.pop(k, None)
                else:
                    chg[k] = v
            else:
                new[k] = v
                size += 1
        out._base, out._set, out._gone, out._new, out._len = base, chg, frozenset(gone), new, size
        if len(chg) + len(gone) + len(new) > limit(size):
            out._base, out._set, out._gone, out._new = out.to_dict(), {}, frozenset(), {}
        return out


def limit(size: int) -> int:
    """Overlay names allowed before a fold: a derive copies at most this
    many, and a fold (a copy of ``size`` names) comes at most once in
    ``limit`` changed names; the square root balances the two."""
    return max(MIN_LIMIT, int(size ** 0.5))
