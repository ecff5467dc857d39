"""Steps, states and branches as operations: capture after a cell, and
rewind, undo, fork, checkout, resume and diff over the store.

HEAD is (branch, step): the branch new cells go on and the step whose state
the namespace holds. Moving HEAD never deletes anything: a branch tip left
behind gets a branch of its own (``main@7``) so it stays reachable by name.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import errors
from ..record import gc, steplog, trust
from ..record.objects import ObjectFiles
from .snapshot import Capture, Manifest, RestoreReport, Snapshotter, VarEntry
from ..record.store import Store
from ..tables import human_bytes

log = logging.getLogger(__name__)
GC_AT_OPEN = 5.0  # seconds the orphan pass at open may take; `fm gc` has no limit
MANIFESTS_KEPT = 64  # states of recent steps kept in memory (a step's state never changes)

BRANCH_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./@")


@dataclass
class Moved:
    """What a HEAD move did, for the one line the user is shown."""

    step: int
    branch: str
    report: RestoreReport
    seconds: float

    def line(self, verb: str) -> str:
        r = self.report
        parts = [f"{verb} step {self.step} on {self.branch}",
                 f"{len(r.restored)} restored", f"{len(r.unchanged)} unchanged"]
        if r.deleted:
            parts.append(f"{len(r.deleted)} removed")
        text = ", ".join(parts) + f" ({self.seconds * 1000:.0f} ms)"
        # Whatever is not exactly the target's is named: never a silent difference.
        if r.untracked:
            text += "; kept as they are now, not tracked: " + ", ".join(r.untracked)
        if r.rebuilt:
            text += "; rebuilt by re-running the statement that made them: " + ", ".join(r.rebuilt)
        kept = {n: why for n, why in r.not_restored.items() if n in r.kept}
        gone = {n: why for n, why in r.not_restored.items() if n not in r.kept}
        if kept:
            text += "; not restored, kept as they are now: " + ", ".join(
                f"{n} ({why})" for n, why in sorted(kept.items()))
        if gone:
            text += "; not restored: " + ", ".join(
                f"{n} ({why})" for n, why in sorted(gone.items()))
        if r.untracked:
            text += f"; --rebuild {','.join(r.untracked)} re-runs the statements that made them"
        return text


class States:
    def __init__(self, store: Store, ns: dict, hidden: set[str] | None = None):
        self.store = store
        self.ns = ns
        self.gate = trust.gate(store)
        # one sync per cell for everything it wrote (capture), not one per object
        objects = ObjectFiles(store.sidecar(".objects"), defer=True)
        if not store.read_only and not steplog.fsync_wanted():
            # The step log's lines are not synced per record in this mode, so a
            # per-cell fdatasync of the pack bought nothing against a power loss
            # (0.5 ms median, up to 15 ms a cell); it is done before each batch
            # commits into DuckDB instead (docs/reliability.md).
            objects.packs_later = True
            store.before_batch.append(objects.sync_packs)
        self.snap = Snapshotter(objects, hidden, gate=self.gate)
        self.live: Manifest | None = None  # state of ns as last captured or restored
        self.gc_line: str | None = None  # what the orphan pass at open reclaimed
        self._write_failed = False  # objects of a failed capture stay unsettled for gc
        self._uncommitted = False
        self.last_capture: Capture | None = None  # what the last capture looked at (tests, %fm why)
        if not store.read_only and gc.needed(objects):
            self.gc_line = gc.collect(store, objects, GC_AT_OPEN).line()
            log.info(self.gc_line)
        self._known = store.known_entry_ids()
        # step -> its state, for HEAD moves among recent steps: a step record
        # that carries a state is final (this process is the one writer), so
        # nothing here can go stale; reading it again costs two DuckDB queries.
        self._manifests: OrderedDict[int, Manifest] = OrderedDict()

    @property
    def trusted(self) -> bool:
        return self.gate.trusted

    # -- capture -------------------------------------------------------------

    def capture(self, code: str) -> tuple[dict[str, Any], list[dict[str, Any]], Capture]:
        """Capture ns after a cell: (state for the step record, new entries, capture)."""
        if self._uncommitted:  # the last capture's record never committed
            self._write_failed = True
        try:
            cap = self.snap.capture(self.ns, code, self.live)
            self.snap.objects.sync()
        except BaseException:
            self._write_failed = True
            self.snap.objects.abandon()
            raise
        self._uncommitted = True
        self.last_capture = cap
        m = cap.manifest
        eids = m.entry_ids()  # carried over from the last state for untouched names
        new = [{"id": eids[n], **m[n].to_json()}
               for n in (m.names() if cap.touched is None else cap.touched)
               if n in eids and eids[n] not in self._known]
        # Tuples, not lists: a tuple of strings leaves the garbage collector's
        # lists once a collection has seen it, so the states the step log holds
        # until its batch is in DuckDB are not walked by every collection
        # (with 10,000 names a gen-1 collection took ~15 ms, a p99 cell).
        state = {"names": tuple(eids), "ids": tuple(eids.values()), "changed": sorted(cap.changed)}
        return state, new, cap

    def idle_recheck(self, new_round: bool = False) -> bool:
        """One look at small objects between cells (recheck.py); whether
        this round has more to look at."""
        if self.live is None or self._uncommitted:
            return False
        return self.snap.idle_recheck(self.ns, self.live, new_round)

    def committed(self, new: list[dict[str, Any]], cap: Capture, step: int | None = None) -> None:
        """The record of ``step`` holding ``cap``'s state is committed."""
        self._known.update(e["id"] for e in new)
        self.live = cap.manifest
        if step is not None:
            self._keep(step, cap.manifest)
        self._uncommitted = False
        if not self._write_failed:
            self.snap.objects.settle()

    # -- reading states --------------------------------------------------------

    def _require_trust(self) -> None:
        self.gate.require()

    def _keep(self, step: int, m: Manifest) -> Manifest:
        self._manifests[step] = m
        self._manifests.move_to_end(step)
        while len(self._manifests) > MANIFESTS_KEPT:
            self._manifests.popitem(last=False)
        return m

    def manifest(self, step: int) -> Manifest:
        if step in self._manifests:
            self._manifests.move_to_end(step)
            return self._manifests[step]
        rec = self.store.step(step)
        if rec is None:
            raise errors.NoSuchStep(step)
        if rec.state is None:
            raise errors.UsageError(
                f"step {step} has no recorded state ({rec.status}); "
                f"pick a step that finished, e.g. its parent {rec.parent}")
        entries = self.store.entries(rec.state["ids"])
        return self._keep(step, Manifest({n: VarEntry.from_json(entries[i]) for n, i in
                                          zip(rec.state["names"], rec.state["ids"]) if i in entries}))

    def value(self, name: str, step: int) -> Any:
        m = self.manifest(step)
        if name not in m:
            raise errors.UsageError(f"no variable {name!r} after step {step}; it holds: "
                                    + (", ".join(sorted(m)) or "nothing"))
        self._require_trust()
        return self.snap.load_value(m[name])

    def frame_path(self, name: str, step: int) -> Path:
        m = self.manifest(step)
        if name not in m:
            raise errors.UsageError(f"no variable {name!r} after step {step}")
        self._require_trust()
        path = self.snap.frame_path(m[name])
        if path is None:
            raise errors.UsageError(
                f"{name!r} after step {step} is a {m[name].type}, not a DataFrame stored as Parquet")
        return path

    # -- moving HEAD ---------------------------------------------------------

    def restore(self, step: int, progress: Callable[[int, int], None] | None = None,
                rebuild: Sequence[str] = ()) -> Moved:
        """Make ns the state after ``step``. Names in ``rebuild`` that would
        be kept as they are (not tracked) are made again by re-running the
        statement that made them, as objects no store holds are."""
        t0 = time.perf_counter()
        self._require_trust()
        target = self.manifest(step)
        missing = [n for n in rebuild if n not in target]
        if missing:
            raise errors.UsageError(f"--rebuild: step {step} has no variable {missing[0]!r}; "
                                    f"it holds: {', '.join(sorted(target)) or 'nothing'}")
        report = self.snap.restore(target, self.ns, self.live, progress)
        for n in rebuild:
            if n in report.untracked:
                report.untracked.remove(n)
                report.not_restored[n] = "not tracked"
                report.kept.append(n)  # stays bound until the rebuild succeeds
        self.rebuild(step, report, target)
        self.live = report.manifest if report.manifest is not None else target
        return Moved(step, "", report, time.perf_counter() - t0)

    def rebuild(self, step: int, report: RestoreReport, target: Manifest) -> None:
        """Re-create objects no store holds by re-running the statements that
        bound them in the cell that last changed them (rebuild.py)."""
        self.gate.require()  # the recorded code runs: as much trust as unpickling
        from .rebuild import rebuild

        rebuild(self, step, report, target)

    def producer(self, step: int, name: str) -> tuple[int, str] | None:
        """The step (and its code) that last changed ``name`` on the way to ``step``."""
        seen = set()
        current: int | None = step
        while current is not None and current not in seen:
            seen.add(current)
            rec = self.store.step(current)
            if rec is None:
                return None
            if rec.state and name in rec.state.get("changed", []):
                return rec.step, rec.code
            current = rec.parent
        return None

    def parent_chain(self, step: int, n: int) -> int:
        current = step
        for i in range(n):
            rec = self.store.step(current)
            if rec is None or rec.parent is None:
                raise errors.UsageError(
                    f"cannot undo {n}: step {step} has only {i} ancestor(s) on record")
            current = rec.parent
        return current


def diff(a: Manifest, b: Manifest) -> dict[str, list[tuple[str, str, str]]]:
    """Names added, removed and changed going from state a to state b, and
    "not tracked": names in both bound to the same object that shows no
    state, so whether it changed cannot be known."""
    added = [(n, "", b[n].summary) for n in sorted(set(b) - set(a))]
    removed = [(n, a[n].summary, "") for n in sorted(set(a) - set(b))]
    both = sorted(set(a) & set(b))
    changed = [(n, a[n].summary, b[n].summary) for n in both
               if (a[n].ref, a[n].fp) != (b[n].ref, b[n].fp)]
    untracked = [(n, a[n].summary, b[n].summary) for n in both
                 if (a[n].ref, a[n].fp) == (b[n].ref, b[n].fp) and not b[n].tracked]
    return {"added": added, "removed": removed, "changed": changed, "not tracked": untracked}


def check_branch_name(name: str, existing: Mapping[str, Any]) -> None:
    if not name or not set(name) <= BRANCH_CHARS or name[0] in "-.":
        raise errors.UsageError(
            f"{name!r} is not a usable branch name; use letters, digits and - _ . / @")
    if name.isdigit():
        raise errors.UsageError(f"branch name {name!r} would read as a step number; add a letter")
    if name in existing:
        raise errors.UsageError(f"branch {name!r} exists already; `%fm checkout {name}` switches to it")


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
    """A one-line progress bar for restores that take long enough to notice."""
    stream = stream or sys.stderr
    state = {"start": time.monotonic(), "shown": False, "last": 0.0}

    def show(done: int, total: int) -> None:
        if total < 64 << 20 and not state["shown"]:
            return  # small restores finish before a bar would help
        now = time.monotonic()
        if done < total and now - state["last"] < 0.1:
            return  # each redraw is an IOPub message: ten a second is plenty
        state["last"] = now
        frac = done / total if total else 1.0
        bar = "█" * int(24 * frac) + "·" * (24 - int(24 * frac))
        stream.write(f"\rrestoring {bar} {human_bytes(done)} / {human_bytes(total)}")
        state["shown"] = True
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show
