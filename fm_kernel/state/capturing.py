"""One capture of a namespace after a cell (see Snapshotter.capture and the
module docstring of snapshot.py): which names to look at, their fingerprints,
and which groups must be stored again."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .analysis import WALK_LIMIT, ObjectWalk, analyse_code
from .pickling import Payload, array_roots

if TYPE_CHECKING:
    from .snapshot import Capture, Manifest, Snapshotter, VarEntry


class CaptureRun:
    """One capture. When the last capture's bindings are known (``ids_known``)
    nothing here walks every name: the names bound anew since come from a
    compare of the namespace's entry table with the last one (bindings.py),
    the small re-checks take turns within a budget, and the next state is
    derived from the last (Manifest.derive)."""

    def __init__(self, snap: Snapshotter, ns: dict, prev: Manifest | None) -> None:
        self.snap, self.ns, self.prev = snap, ns, prev
        # The namespace at one instant: a thread (a flow's ``global``) that
        # binds or deletes names while this capture runs changes nothing it
        # reads. Values come from here; ``ns`` itself is passed on to
        # pickling, which tells notebook functions by ``__globals__ is ns``.
        self.values = dict.copy(ns)
        self.hashed = [0]
        self.hash_memo: dict[tuple[int, int], tuple] = {}
        self.walks: dict[str, ObjectWalk] = {}
        self.budget = [WALK_LIMIT]
        self.cost: dict[str, float] = {}
        self.payloads: dict[str, Payload | str] = {}  # name -> payload, or why it cannot be pickled
        self.rechecked: set[str] = set()  # candidates only because it was their turn (recheck.py)
        self.ids_known = prev is not None and snap._ids_sig == prev.signature()
        self.prev_groups = prev.groups() if prev is not None else {}
        self.bound, moved, gone = snap._look(self.values, private=True)
        if self.ids_known:
            assert prev is not None
            self.moved = {n for n in moved if self.is_live(n)}
            self.deleted = {n for n in gone if n in prev}
            self.deleted |= {n for n in moved if n in prev and not self.is_live(n)}
        else:
            live = snap.visible(self.values)
            self.moved = set(live)
            self.deleted = set(prev) - set(live) if prev is not None else set()

    def is_live(self, n: str) -> bool:
        return n in self.values and self.snap._walkable(self.values, n)

    def live_names(self) -> list[str]:
        """Every name of the state after this cell (O(names): the full-scan path only)."""
        return self.snap.visible(self.values)

    def walk(self, n: str) -> ObjectWalk:
        if n not in self.walks:
            t = time.perf_counter()
            self.walks[n] = ObjectWalk(self.values[n], self.ns, self.budget)
            self.cost[n] = self.cost.get(n, 0.0) + time.perf_counter() - t
        return self.walks[n]

    def fingerprint(self, n: str) -> Payload | str:
        if n not in self.payloads:
            roots = array_roots(self.walk(n).arrays)
            t = time.perf_counter()
            self.payloads[n] = self.snap._pickle((self.values[n],), self.ns, self.hash_memo, self.hashed,
                                                 roots, stage=True)
            self.cost[n] = self.cost.get(n, 0.0) + time.perf_counter() - t
        return self.payloads[n]

    def candidates(self, code: str) -> tuple[set[str], str | None]:
        """The names the cell could have touched, or all of them and why."""
        prev, snap = self.prev, self.snap
        if prev is None:
            return set(self.live_names()), "no previous state"
        if not self.ids_known:
            return set(self.live_names()), "the previous state was not captured by this process"
        names, reason = analyse_code(code)
        if reason is not None:
            return set(self.live_names()), reason
        cands, reason = snap._touched(self.values, {n for n in names if self.is_live(n)}, self.walk)
        if reason is not None:
            return set(self.live_names()), reason
        cands = {n for n in cands if self.is_live(n)} | self.moved
        self.rechecked = snap.rechecks.on_reply(prev, self.is_live) - cands
        return cands | self.rechecked, None

    def run(self, code: str) -> Capture:
        from .snapshot import Capture, Manifest

        t0 = time.perf_counter()
        prev, snap = self.prev, self.snap
        cands, reason = self.candidates(code)
        rebound = {n for n in self.moved if prev is not None and n in prev} if self.ids_known \
            else set()
        # Names sharing a stored group with a candidate are walked too, so a
        # group is never split by looking at only part of it.
        walkset = set(cands)
        for n in cands:
            if prev is not None and n in prev and prev[n].ref:
                walkset.update(m for m in self.prev_groups[prev[n].ref] if self.is_live(m))
        comps = snap._components(sorted(walkset), self.walk)
        for n in sorted(cands):
            self.fingerprint(n)
        entries: dict[str, VarEntry] = {}
        changed: set[str] = set()
        written = 0
        for comp in comps:
            if self._unchanged(comp):
                entries.update({n: prev[n] for n in comp})  # type: ignore[index]
                changed.update(n for n in comp if n in rebound)
                continue
            written += self._store_group(comp, entries)
            changed.update(n for n in comp if prev is None or n not in prev
                           or prev[n].fp != entries[n].fp or n in rebound)
        deleted = self.deleted
        if prev is not None and reason is None:  # untouched names: prev holds them
            manifest, touched = prev.derive(entries, deleted), set(entries)
        else:
            live = self.live_names()
            for n in live:
                if n not in entries:
                    entries[n] = prev[n]  # type: ignore[index]  # untouched: prev holds it
            manifest, touched = Manifest({n: entries[n] for n in live}), None
        snap._keep(self.bound, manifest, self.cost, changed & self.rechecked)
        snap._watch(set(entries) | deleted, self.values, manifest)
        return Capture(manifest=manifest, changed=changed, deleted=deleted, bytes_written=written,
                       bytes_hashed=self.hashed[0], candidates=cands, touched=touched,
                       full_scan_reason=reason, seconds=time.perf_counter() - t0)

    def _unchanged(self, comp: list[str]) -> bool:
        """Whether ``comp`` is exactly one stored group whose fingerprinted members are as stored."""
        prev = self.prev
        if prev is None or not all(n in prev for n in comp):
            return False
        refs = {prev[n].ref for n in comp}
        if len(refs) != 1:
            return False
        ref = next(iter(refs))
        if not ref or sorted(self.prev_groups.get(ref, [])) != comp:
            return False
        return all(isinstance(self.payloads[n], Payload) and self.payloads[n].fp == prev[n].fp  # type: ignore[union-attr]
                   for n in comp if n in self.payloads)

    def _store_group(self, comp: list[str], entries: dict[str, VarEntry]) -> int:
        """Store a new or changed group (every member must be pickled for it);
        the bytes written."""
        ns, values, snap, payloads = self.ns, self.values, self.snap, self.payloads
        for n in comp:
            self.fingerprint(n)
        ok = [n for n in comp if isinstance(payloads[n], Payload)]
        ref, written = "", 0
        if ok:
            if len(ok) == 1:
                group = payloads[ok[0]]
            else:
                roots = array_roots([a for n in ok for a in self.walk(n).arrays])
                group = snap._pickle(tuple(values[n] for n in ok), ns, self.hash_memo, self.hashed, roots,
                                     stage=True)
            if isinstance(group, Payload):
                ref, written = snap._store(ok, group)
            else:  # together they fail though each pickles alone: store singly
                for n in ok:
                    r, w = snap._store([n], payloads[n])
                    written += w
                    entries[n] = snap._entry(n, values[n], payloads[n], r, ns)
                ok = []
        for n in comp:
            if n not in entries:
                entries[n] = snap._entry(n, values[n], payloads[n], ref if n in ok else "", ns)
        return written
