"""Cron schedules of flows (``@flow(schedule=...)``): validation and the
thread that starts scheduled runs. The scheduler knows a flow only by its
``name``, ``schedule``, ``overlap``, ``busy()`` and ``start()``, so it sits
below the run machinery.

The overlap policies, for a slot that comes while the flow's previous run
is still going: ``skip`` (default) drops the slot; ``allow`` starts it
anyway; ``queue`` enqueues it on the flow's own queue of concurrency 1
(``slot_queue_name``; runs.py defines that queue when it starts the
schedule), so it starts when the previous slot's run ends, and a kill -9
meanwhile loses nothing: the waiting slot is an ``enqueued`` run record.
At most one slot waits (Temporal's BUFFER_ONE): a slot that finds one
waiting is dropped, so a flow slower than its schedule runs back to back
instead of piling up a backlog that grows without end.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ..errors import FlowError
from .journal import ENQUEUED

if TYPE_CHECKING:
    from .journal import Journal

log = logging.getLogger(__name__)


def _seconds_last(expr: str) -> str:
    """Six fields are read with the seconds FIRST (``*/10 * * * * *``: every
    10 s), as in Quartz and Spring; croniter reads them seconds last, so the
    field is moved before croniter sees it."""
    fields = expr.split()
    return " ".join(fields[1:] + fields[:1]) if len(fields) == 6 else expr


def cron(expr: str, start: float) -> Any:
    from croniter import croniter

    return croniter(_seconds_last(expr), start)


def validate_schedule(expr: str, name: str) -> None:
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover
        raise FlowError(f"flow {name!r} has a schedule but croniter is not installed; "
                        "pip install croniter") from None
    if not isinstance(expr, str) or len(expr.split()) not in (5, 6) \
            or not croniter.is_valid(_seconds_last(expr)):
        raise FlowError(f"flow {name!r}: {expr!r} is not a cron expression (5 fields, e.g. "
                        "'*/15 * * * *', or 6 with seconds FIRST, e.g. '*/10 * * * * *')")


def validate_overlap(overlap: Any, name: str) -> str:
    if overlap not in ("skip", "queue", "allow"):
        raise FlowError(f"flow {name!r}: overlap={overlap!r} is not supported; use 'skip' "
                        "(default: a slot whose previous run is still going is skipped), "
                        "'queue' (it starts when that run ends; at most one slot waits) or "
                        "'allow' (every slot starts a run)")
    return overlap


def slot_queue_name(flow: str) -> str:
    """The fm.Queue (concurrency 1) that holds the slots of a flow with
    overlap="queue": a queue name is letters, digits, '.', '_' and '-'."""
    return f"schedule.{re.sub(r'[^A-Za-z0-9_.-]', '_', flow)[:96]}"


class Scheduler:
    """Starts scheduled flows at their cron slots while this process is up.
    The last slot run is journaled per flow (events kind 'flow_scheduled'),
    so slots missed while nothing was up run once, not once each."""

    def __init__(self, journal: Callable[[], "Journal"]) -> None:
        self.journal = journal
        self.flows: dict[str, Any] = {}
        self.next: dict[str, float] = {}
        self.cv = threading.Condition()
        self.thread: threading.Thread | None = None
        self.generation = 0  # a thread runs while this is the value it started with

    def add(self, fl: Any) -> None:
        j = self.journal()
        last = j.last_slot(fl.name)
        t = time.time()
        if last is None:  # first sight: a baseline, so later absences are detected
            j.record_slot(fl.name, t, None)
            last = t
        nxt = cron(fl.schedule, last).get_next(float)
        with self.cv:
            known = self.flows.get(fl.name)
            self.flows[fl.name] = fl
            if known is not None and known.schedule == fl.schedule and fl.name in self.next:
                return  # the same schedule again (a re-run cell): keep its next slot
            # a missed slot: run now, once
            self.next[fl.name] = min(nxt, t) if nxt <= t else nxt
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, args=(self.generation,),
                                               name="fm-scheduler", daemon=True)
                self.thread.start()
            self.cv.notify_all()

    def remove(self, name: str) -> None:
        with self.cv:
            self.flows.pop(name, None)
            self.next.pop(name, None)

    def stop(self) -> None:
        with self.cv:
            self.generation, self.thread = self.generation + 1, None
            self.flows.clear()
            self.next.clear()
            self.cv.notify_all()

    def _due(self) -> tuple[Any, float] | None:
        """The flow whose slot has come and that slot, or None after waiting a while."""
        with self.cv:
            if not self.next:
                self.cv.wait(1.0)
                return None
            name = min(self.next, key=self.next.__getitem__)
            left = self.next[name] - time.time()
            if left > 0:
                self.cv.wait(min(left, 1.0))
                return None
            fl = self.flows[name]
            t = time.time()
            slot = cron(fl.schedule, t + 1e-3).get_prev(float)
            self.next[name] = cron(fl.schedule, max(slot, t)).get_next(float)
            return fl, slot

    def _loop(self, generation: int) -> None:
        while generation == self.generation:
            due = self._due()
            if due is None:
                continue
            fl, slot = due
            try:
                self.fire(fl, slot)
            except Exception:  # the next slot tries again
                log.exception("scheduled run of flow %r for slot %s failed to start", fl.name, slot)

    def fire(self, fl: Any, slot: float) -> Any:
        """Start ``fl``'s run for ``slot``, once: the run id is made from the
        flow and the slot, so a second firing of the same slot (the flow
        registered again while its catch-up run was starting, or a kill
        between the start and the slot's record) returns the first run."""
        run_id = slot_run_id(fl.name, slot)
        if self.journal().run_row(run_id) is not None:  # fired already: that run, not a skip
            return fl.start(run_id=run_id)
        if fl.overlap == "queue":
            return self._enqueue(fl, slot, run_id)
        if fl.overlap == "skip" and fl.busy():
            log.info("flow %r: slot %s skipped, its previous run is still going", fl.name, slot)
            self.journal().record_slot(fl.name, slot, None)
            return None
        run = fl.start(run_id=run_id)
        self.journal().record_slot(fl.name, slot, run.id)
        return run

    def _enqueue(self, fl: Any, slot: float, run_id: str) -> Any:
        """overlap="queue": the slot waits on the flow's queue, unless one
        waits there already (the bound: that one stands for both). Asked of
        the record, not of memory, so a slot left waiting by a killed kernel
        counts before its queue has loaded it."""
        queue = slot_queue_name(fl.name)
        rows = self.journal().queue_rows(queue)
        if any(r["status"] == ENQUEUED and r["flow"] == fl.name for r in rows):
            log.info("flow %r: slot %s dropped, an earlier slot already waits for the previous "
                     "run to end", fl.name, slot)
            self.journal().record_slot(fl.name, slot, None)
            return None
        run = fl.start(run_id=run_id, queue=queue)
        self.journal().record_slot(fl.name, slot, run.id)
        return run


def slot_run_id(flow: str, slot: float) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', flow)[:96]}-at-{int(slot)}"
