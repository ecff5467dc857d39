"""Run timeouts: ``@flow(timeout=s)`` and ``flow.start(..., timeout=s)``.

A run's deadline (its start + the timeout, wall-clock epoch seconds) is
recorded with the run's first record, so a run resumed after a kill keeps the
deadline it started with instead of getting a fresh one. One thread per
registry watches the deadlines of the runs this process knows and, when one
passes, calls ``run.expire()``: the run ends ``cancelled`` with
``fm.Timeout`` as its error, and its unfinished child runs with it
(run.py). Like ``cancel()``, this interrupts a sleep or a wait at once; a
step body already running finishes first.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from typing import Any

from ..errors import UsageError

log = logging.getLogger(__name__)


def validate_timeout(value: Any, flow: str, call: str = "@fm.flow") -> float | None:
    """``value`` as seconds (None: no timeout); refuses anything else with a
    UsageError naming the flow, where it is given rather than when it fires."""
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise UsageError(f"flow {flow!r}: timeout={value!r} given to {call} is not allowed; a run "
                         "timeout must be a finite number of seconds > 0, or None for no timeout")
    return float(value)


class Deadlines:
    """The deadlines of the runs of one registry, earliest first, and the
    thread that expires them. A run finished before its deadline stays in
    the heap until then (expire() on it changes nothing): removing it would
    cost a heap search per finished run for nothing."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._cv = threading.Condition()
        self._count = 0  # ties: never compare two runs
        self._thread: threading.Thread | None = None
        self._stopped = False

    def watch(self, run: Any) -> None:
        """Call ``run.expire()`` once ``run.deadline`` (epoch seconds) passes."""
        with self._cv:
            if self._stopped:
                return
            heapq.heappush(self._heap, (run.deadline, self._count, run))
            self._count += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fm-run-deadlines",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._cv.wait(self._heap[0][0] - time.time() if self._heap else None)
                if self._stopped:
                    return
                _, _, run = heapq.heappop(self._heap)
            try:
                run.expire()
            except Exception:  # the run stays pending; the next kernel expires it at start
                log.exception("could not stop run %s at its deadline", run.id)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
