"""A state as data: ``VarEntry`` (one name: what it was, where its group is
stored, its fingerprint) and ``Manifest`` (name -> entry, with the indexes a
capture carries from one state to the next)."""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..record.objects import digest
from .layered import Layered

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
    fp: str = ""               # content fingerprint: equal fp <=> equal pickled content;
                               # "~…" the state an unpicklable object exposes, "!…" its identity
    tracked: bool = True       # False: nothing shows whether the object changed (fp is its identity)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | str) -> VarEntry:
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if "tracked" not in data:  # written before `tracked`: an identity fp was all there was
            entry.tracked = not entry.fp.startswith("!")
        return entry


class Manifest(Mapping[str, VarEntry]):
    """The full state after a step.  Immutable once built.

    A capture derives the next state from this one (``derive``), carrying
    the group index, the signature and the entry ids along and changing them
    only for the names the cell touched: with 10,000 names a small cell must
    not pay for all of them (bench/namespace_scale.py)."""

    def __init__(self, entries: Mapping[str, VarEntry] | None = None) -> None:
        self._entries: Layered[str, VarEntry] = Layered(entries or {})
        self._groups: Layered[str, tuple[str, ...]] | None = None
        self._sig: int | None = None
        self._eids: Layered[str, str] | None = None

    def __getitem__(self, name: str) -> VarEntry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Manifest({sorted(self._entries)})"

    def names(self) -> list[str]:
        return list(self._entries)

    def groups(self) -> Mapping[str, tuple[str, ...]]:
        """Stored group ref -> the names it holds."""
        if self._groups is None:
            out: dict[str, list[str]] = {}
            for n, e in self._entries.items():
                if e.ref:
                    out.setdefault(e.ref, []).append(n)
            self._groups = Layered((ref, tuple(ns)) for ref, ns in out.items())
        return self._groups

    def signature(self) -> str:
        """Names with their stored refs and fingerprints, as one value that
        does not depend on their order (a sum of one hash per name)."""
        if self._sig is None:
            self._sig = sum(_entry_hash(n, e) for n, e in self._entries.items()) % _SIG_MOD
        return f"{self._sig:032x}"

    def entry_ids(self) -> Mapping[str, str]:
        """Name -> the id of its entry (entry_id), in the manifest's order."""
        if self._eids is None:
            self._eids = Layered((n, entry_id(e)) for n, e in self._entries.items())
        return self._eids

    def derive(self, updates: Mapping[str, VarEntry], deleted: set[str]) -> Manifest:
        """This state with ``updates`` set and ``deleted`` gone, its indexes
        carried over: the cost is in the names changed, not in all of them
        (the maps share what did not change: layered.py)."""
        old = self._entries
        entries = old.derive(updates, deleted)
        m = Manifest.__new__(Manifest)
        m._entries = entries
        # once each: a name both deleted and set again was counted twice
        touched = [n for n in dict.fromkeys((*deleted, *updates))
                   if old.get(n) is not (updates[n] if n in updates else None)]
        m._groups = self._derive_groups(touched, updates) if self._groups is not None else None
        m._sig = None
        if self._sig is not None:
            sig = self._sig
            for n in touched:
                if n in old:
                    sig -= _entry_hash(n, old[n])
                if n in updates:
                    sig += _entry_hash(n, updates[n])
            m._sig = sig % _SIG_MOD
        m._eids = None
        if self._eids is not None:
            eids = self._eids
            m._eids = eids.derive({n: eids[n] if old.get(n) is e and n in eids else entry_id(e)
                                   for n, e in updates.items()}, deleted)
        return m

    def _derive_groups(self, touched: list[str],
                       updates: Mapping[str, VarEntry]) -> Layered[str, tuple[str, ...]]:
        groups = self._groups
        assert groups is not None
        changed: dict[str, tuple[str, ...]] = {}
        for n in touched:
            e = self._entries.get(n)
            if e is not None and e.ref and e.ref in groups:
                members = changed.get(e.ref, groups[e.ref])
                changed[e.ref] = tuple(x for x in members if x != n)
        for n in touched:
            e = updates.get(n)
            if e is not None and e.ref:
                changed[e.ref] = changed.get(e.ref, groups.get(e.ref, ())) + (n,)
        return groups.derive({r: ns for r, ns in changed.items() if ns},
                             [r for r, ns in changed.items() if not ns])

    def to_json(self) -> str:
        return json.dumps({"v": 1, "vars": {n: e.to_json() for n, e in self._entries.items()}})

    @classmethod
    def from_json(cls, data: str | dict) -> Manifest:
        if isinstance(data, str):
            data = json.loads(data)
        return cls({n: VarEntry.from_json(e) for n, e in data["vars"].items()})


_SIG_MOD = 1 << 128


def _entry_hash(name: str, e: VarEntry) -> int:
    return int(digest(f"{name}\0{e.ref}\0{e.fp}".encode()), 16)


def entry_id(entry: VarEntry) -> str:
    """The id an entry is stored under: a digest of all its fields."""
    # fields directly, not dataclasses.asdict: asdict deep-copies the value
    return digest(json.dumps([getattr(entry, f.name) for f in fields(entry)],
                             default=str).encode())


