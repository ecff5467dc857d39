"""Making a namespace hold a past state without destroying what cannot be
replaced.

Everything that can fail happens before the namespace changes: every group
to load is read and unpickled first, and only then are names rebound and
removed. A value that cannot be loaded keeps the live object bound to its
name (named in the report), and never takes the rest of its group with it.

Objects a restore takes out of the namespace and no store can give back
(they do not pickle, or their pickle may not load) are *set aside* in memory,
keyed by fingerprint, so that going back to the step that held them returns
the very same objects: a rewind followed by a checkout of the tip returns
the semaphore, the open file, the widget the user had.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .patching import Patch, plan

if TYPE_CHECKING:
    from .snapshot import Manifest, RestoreReport, Snapshotter, VarEntry

log = logging.getLogger(__name__)
ASIDE_MAX = 256               # objects set aside at most (oldest dropped first)
ASIDE_SMALL = 256 * 1024      # picklable objects up to this size are set aside too


def ticker(done: list | None) -> Callable[[int], None]:
    """Count bytes read into ``done`` = [bytes so far, bytes in all, progress
    callback or None], calling the callback on each."""
    def tick(n: int) -> None:
        if done is not None:
            done[0] += n
            if done[2] is not None:
                done[2](done[0], done[1])
    return tick


class Aside:
    """Objects restores displaced, by name and fingerprint ("!id", "~state" or
    a pickle fp): an object only ever goes back to the name it was taken from."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def put(self, name: str, fp: str, obj: Any) -> None:
        key = (name, fp)
        self._items[key] = obj
        self._items.move_to_end(key)
        while len(self._items) > ASIDE_MAX:
            self._items.popitem(last=False)

    def take(self, name: str, fp: str, still: Callable[[Any], bool]) -> tuple[bool, Any]:
        """The object set aside for ``name`` with ``fp`` if ``still(obj)``
        confirms it holds that state now (something else may have mutated it since)."""
        key = (name, fp)
        if key not in self._items:
            return False, None
        obj = self._items[key]
        if not still(obj):
            return False, None
        del self._items[key]
        return True, obj

    def __len__(self) -> int:
        return len(self._items)


class Restore:
    """One restore of ``target`` into ``ns`` (see Snapshotter.restore)."""

    def __init__(self, snap: Snapshotter, target: Manifest, ns: dict, live: Manifest | None,
                 report: RestoreReport) -> None:
        self.snap, self.target, self.ns, self.live, self.report = snap, target, ns, live, report
        self.ids_known = live is not None and snap._ids_sig == live.signature()
        # names bound to another object since the live state was captured (by anyone)
        self.moved = snap._look(ns)[1] if self.ids_known else set()
        self.put: dict[str, Any] = {}   # name -> object to bind once nothing can fail any more
        self.patches: list[Patch] = []  # live arrays to patch then (patching.py)

    def live_is(self, n: str, e: VarEntry, ref_too: bool = True) -> bool:
        """Whether ``ns[n]`` is the object the live manifest describes and
        that entry equals ``e`` (same content; same stored group if ``ref_too``)."""
        le = self.live.get(n) if self.live is not None else None
        return (le is not None and n in self.ns and le.fp == e.fp and (le.ref == e.ref or not ref_too)
                and self._same_object(n))

    def _same_object(self, n: str) -> bool:
        """Whether ``ns[n]`` is still the object the live state was captured from."""
        return not self.ids_known or n not in self.moved

    def run(self, progress: Callable[[int, int], None] | None, verify: bool) -> None:
        load_refs: set[str] = set()
        for n, e in self.target.items():
            same = self.live_is(n, e)
            if same and verify and e.restorable:
                same = self.snap.content_fp(self.ns[n], self.ns) == e.fp
            if not e.restorable:
                self._unstored(n, e)
            elif not same:
                load_refs.add(e.ref)
        self._load(load_refs, progress)
        self._apply()

    def _unstored(self, n: str, e: VarEntry) -> None:
        """A name whose object no store holds: keep, take back from aside, or name it."""
        ns, snap = self.ns, self.snap
        if n in ns:
            if e.fp == f"!{id(ns[n]):x}":
                self.report.untracked.append(n)  # the same object: whether it changed is unknowable
                return
            if e.tracked and snap.object_key(ns[n], ns) == e.fp:
                return  # its exposed state is the target's: unchanged
        found, obj = snap.aside.take(n, e.fp, lambda o: snap.object_key(o, ns) == e.fp)
        if found:
            self.put[n] = obj
            return
        why = e.reason or "cannot be stored"
        if n in ns:
            why += ("; its state now differs from the state restored to" if e.tracked
                    else "; a different object is bound now")
        self.report.not_restored[n] = why

    def _load(self, refs: set[str], progress: Callable[[int, int], None] | None) -> None:
        groups = self.target.groups()
        headers: dict[str, dict] = {}
        for ref in sorted(refs):
            try:
                headers[ref] = json.loads(self.snap.objects.get(ref))
            except Exception as exc:
                self._failed(groups[ref], f"cannot load: {exc}")
        patches = {ref: p for ref, h in headers.items() if (p := self._plan(h)) is not None}
        total = sum(p.reading for p in patches.values()) + sum(
            n for ref, h in headers.items() if ref not in patches
            for _, n in h["main"] + [x for b in h["buffers"] for x in b])
        done = [0, total, progress]
        for ref, h in headers.items():
            try:
                if ref in patches:
                    patches[ref].read(self.snap.objects, ticker(done))
                    self.patches.append(patches[ref])
                    self.put[patches[ref].name] = patches[ref].obj
                    continue
                objs = self.snap._load(h, self.ns, done)
            except Exception as exc:
                if ref in patches:
                    patches[ref].discard()
                self._failed(groups[ref], f"cannot load: {type(exc).__name__}: {exc}")
                continue
            self.put.update((n, objs[n]) for n in groups[ref])
        self.report.read_bytes = done[0]

    def _plan(self, header: dict) -> Patch | None:
        """A patch of the live array for a one-name group (patching.py), with
        the live state's header of that name as the hint of how much differs."""
        names = header.get("names") or []
        n = names[0] if len(names) == 1 else None
        le = self.live.get(n) if self.live is not None and n is not None else None
        hint = None
        if le is not None and le.ref and n in self.ns and \
                self._same_object(n):
            try:
                hint = json.loads(self.snap.objects.get(le.ref))
            except Exception:
                hint = None  # only a hint: the patch hashes the live array anyway
        try:
            return plan(self.snap, self.ns, header, hint)
        except Exception:
            # a patch only saves reading: the group then loads as any other
            log.warning("patching %s in place failed; loading it instead", n, exc_info=True)
            return None

    def _failed(self, names: list[str], why: str) -> None:
        """A group that cannot be loaded: each member keeps its live object if
        that already holds the target's content, or comes back from aside."""
        ns, snap = self.ns, self.snap
        for n in names:
            e = self.target[n]
            if self.live_is(n, e, ref_too=False):
                continue
            found, obj = snap.aside.take(n, e.fp, lambda o: snap.content_fp(o, ns) == e.fp)
            if found:
                self.put[n] = obj
            else:
                self.report.not_restored[n] = why

    def _set_aside(self, n: str) -> None:
        le = self.live.get(n) if self.live is not None else None
        if le is None or not self._same_object(n):
            return  # not the object the live state describes: its fingerprint is unknown
        if not le.restorable:
            self.snap.aside.put(n, self.snap.object_key(self.ns[n], self.ns), self.ns[n])
        elif le.size_bytes <= ASIDE_SMALL:
            self.snap.aside.put(n, le.fp, self.ns[n])

    def _apply(self) -> None:
        """Only now is the namespace changed: everything that could fail has."""
        ns, report, target = self.ns, self.report, self.target
        for p in self.patches:
            p.apply()
            report.patched.append(p.name)
        for n in self.snap.visible(ns):
            if n not in target:
                self._set_aside(n)
                del ns[n]
                report.deleted.append(n)
        for n, obj in self.put.items():
            if n in ns and ns[n] is not obj:
                self._set_aside(n)
            ns[n] = obj
            report.restored.append(n)
        skip = set(report.restored) | set(report.not_restored) | set(report.untracked)
        report.unchanged = sorted(n for n in target if n not in skip)
        report.kept = sorted(n for n in report.not_restored if n in ns)
        report.restored.sort()
        report.deleted.sort()
        report.untracked.sort()
        # The state the namespace now holds: a kept object is described by the
        # live entry it had, so the next capture compares against the truth.
        held = {}
        for n in target:
            if n in report.kept:
                le = self.live.get(n) if self.live is not None else None
                if le is not None:
                    held[n] = le
            elif n in ns:
                held[n] = target[n]
        from .snapshot import Manifest

        report.manifest = Manifest(held)
        self.snap._remember(ns, list(held), report.manifest, {*self.put, *report.deleted})
