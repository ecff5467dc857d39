"""Cron schedules of flows (``@flow(schedule=...)``): validation and the
thread that starts scheduled runs; flows.py re-exports every name here.
"""

from __future__ import annotations

import threading
import time

from .core import Flow, FlowError, _new_run, journal


def _validate_schedule(expr: str, name: str) -> None:
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover
        raise FlowError(f"flow {name!r} has a schedule but croniter is not installed; "
                        "pip install croniter") from None
    if not croniter.is_valid(expr):
        raise FlowError(f"flow {name!r}: {expr!r} is not a cron expression (5 fields, or 6 "
                        "with seconds last, e.g. '*/15 * * * *')")


class _Scheduler:
    """Starts scheduled flows at their cron slots while this process is up.
    The last slot run is journaled per flow (events kind 'flow_scheduled'),
    so slots missed while nothing was up run once, not once each."""

    def __init__(self) -> None:
        self.flows: dict[str, Flow] = {}
        self.next: dict[str, float] = {}
        self.cv = threading.Condition()
        self.thread: threading.Thread | None = None

    def add(self, fl: Flow) -> None:
        from croniter import croniter

        j = journal()
        last = j.last_slot(fl.name)
        t = time.time()
        if last is None:  # first sight: a baseline, so later absences are detected
            j.record_slot(fl.name, t, None)
            last = t
        nxt = croniter(fl.schedule, last).get_next(float)
        with self.cv:
            self.flows[fl.name] = fl
            # a missed slot: run now, once
            self.next[fl.name] = min(nxt, t) if nxt <= t else nxt
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="fm-scheduler", daemon=True)
                self.thread.start()
            self.cv.notify_all()

    def _loop(self) -> None:
        from croniter import croniter

        while True:
            with self.cv:
                if not self.next:
                    self.cv.wait(1.0)
                    continue
                name = min(self.next, key=self.next.get)
                left = self.next[name] - time.time()
                if left > 0:
                    self.cv.wait(min(left, 1.0))
                    continue
                fl = self.flows[name]
                t = time.time()
                slot = croniter(fl.schedule, t + 1e-3).get_prev(float)
                self.next[name] = croniter(fl.schedule, max(slot, t)).get_next(float)
            try:
                run = _new_run(fl, (), {})
                journal().record_slot(fl.name, slot, run.id)
                run._start()
            except Exception:  # the next slot tries again
                pass


_SCHEDULER = _Scheduler()
