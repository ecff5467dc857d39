"""Run timeouts: ``@flow(timeout=s)`` and ``flow.start(..., timeout=s)``.

A run's deadline (its start + the timeout, wall-clock epoch seconds) is
recorded with the run's first record, so a run resumed after a kill keeps the
deadline it started with instead of getting a fresh one. The deadlines of
the runs this process knows go on the registry's one timer heap (parking.py:
the heap parked runs wake from, so a process has one timer thread): when
one passes, ``run.expire()`` ends the run ``cancelled`` with ``fm.Timeout``
as its error, and its unfinished child runs with it (run.py). Like
``cancel()``, this interrupts a sleep or a wait at once, and wakes a parked
run to raise it there; a step body already running finishes first.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UsageError
from .parking import Timers


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
    """Expires the runs of one registry at their deadlines, through the
    registry's timer heap. A run finished before its deadline stays on the
    heap until then (expire() on it changes nothing): removing it would cost
    a heap search per finished run for nothing."""

    def __init__(self, timers: Timers) -> None:
        self._timers = timers

    def watch(self, run: Any) -> None:
        """Call ``run.expire()`` once ``run.deadline`` (epoch seconds) passes.
        Should that fail, the run stays pending; the next kernel expires it
        at start (its deadline is recorded)."""
        self._timers.at(run.deadline, run.expire, f"the deadline of run {run.id}")
