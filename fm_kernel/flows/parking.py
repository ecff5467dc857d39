"""A run that waits holds no thread (issue 15): parking.

Every durable operation of a run is journaled and replay returns recorded
results, so a synchronous flow body that reaches a durable wait it cannot
pass yet does not have to keep its thread: the wait's wake time or deadline
is journaled first (as before), then the wait raises ``Park``. The waits
that park: ``fm.sleep``, ``wait_for``, ``cb.wait``, ``fm.recv``,
``fm.wait_event``, ``run.get_event``, a child's ``result()`` (with a
timeout too: run_events.result_within journals its deadline) and ``await
child``, ``fm.task`` waiting for its worker (tasks.py; its lease's end is
the wake time), a step's retry backoff (steps.py; the journaled retry time),
and an ``fm.map`` whose items are not done (fanout.py: the items are
futures that journal themselves and wake the run). ``Park`` derives from
BaseException, so a flow's ``except Exception`` does not catch it (a
``finally`` does run: docs/flows.md says what it sees). The run's execution
ends there without a final status, and the run is registered here: with the
timer heap for its wake time or deadline, and (for waits on deliveries) for
``run.wake()``, which every delivery calls already. When woken, the run is
executed again from the top on a worker: replay returns each recorded
operation at once up to the wait, which now finds its condition met and
goes on.

One timer heap per registry (``Timers``): parked runs' wake times, fm.map
retries and attempt timeouts, and run deadlines (deadlines.py) all sit on
it, so a process has one timer thread whatever waits.

Workers: a pool runs the executions ("segments") of runs. At most ``CORE``
workers run flowmetal's own code (replay, journaling) at once; a worker that
enters user code or a blocking wait (a step body, a wait too short to park,
an async flow's event loop) says so (``blocking()``) and stops counting, so
a queued segment gets another worker at once, as it got a thread of its own
before (Java's ForkJoinPool calls this managed blocking). For anything else
that blocks, a watchdog adds a worker whenever work waits and no segment
has ended for ``STUCK`` seconds. Workers leave after ``LINGER`` idle
seconds. So threads are bounded by what actually runs or blocks, never by
how many runs are waiting.

Waits shorter than ``PARK_AFTER`` keep blocking their thread: a replay costs
a pass over the run's journal, and a short wait is cheaper kept
(docs/bench-flows.md has the figures).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, Iterator

from ..errors import Cancelled

log = logging.getLogger(__name__)

PARK_AFTER = 1.0  # seconds: a shorter sleep or wait blocks its thread instead
CORE = 8  # workers kept busy without question
MOST = 512  # the watchdog's ceiling (today's thread per run had none)
STUCK = 0.5  # seconds without a segment ending, with work queued: add a worker
LINGER = 2.0  # an idle worker leaves after this (seconds)


class Park(BaseException):
    """Unwinds a run's thread at a durable wait that is not satisfied yet.
    Not an Exception, so user code's ``except Exception`` lets it through;
    it must never be swallowed (a bare ``except:`` must re-raise).

    ``wake_at``: epoch seconds when the wait's time is up (a sleep's wake
    time, a wait's deadline), None for none. ``since``: the run's wake count
    read before the wait looked for its condition, so a delivery between the
    look and the park is not lost (None: only the timer and a cancel wake
    it, as for a sleep)."""

    def __init__(self, wake_at: float | None, since: int | None, what: str):
        super().__init__(what)
        self.wake_at, self.since, self.what = wake_at, since, what


def can_park(ctx: Any, seconds: float | None = None) -> bool:
    """Whether the flow body of ``ctx`` may park here: it runs on the
    thread of a segment that allows it (not a direct call, not an fm.map
    worker) or is an async flow's (whose waits run in helper threads the
    body awaits), and the wait is long enough (``seconds`` None: open-ended)."""
    if getattr(ctx, "park_thread", None) != threading.get_ident() and not getattr(ctx, "park_async", False):
        return False
    return seconds is None or seconds >= PARK_AFTER


def park(ctx: Any, wake_at: float | None, since: int | None, what: str) -> None:
    """Raise Park for the run of ``ctx`` (see can_park first). The context
    remembers it: a body that swallows it is parked all the same."""
    ctx.run.check_cancel()  # a cancelled run ends here, never parks again
    exc = Park(wake_at, since, what)
    ctx.parking = exc
    raise exc


async def settle_branches(ctx: Any) -> None:
    """At the end of an async flow body (its ``finally``): if it is parking,
    let the other branches of the loop end first. A step still running in
    another gathered branch finishes and is journaled before the run parks
    (asyncio.run would cancel it midway, and a replay would run it again);
    a branch that failed for real (not by the body's end) is the run's
    error, as gather would have raised it had nothing parked."""
    if ctx is None or ctx.parking is None:
        return
    me = asyncio.current_task()
    ends = await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not me),
                                return_exceptions=True)
    real = [e for e in ends if isinstance(e, Exception) and not isinstance(e, Cancelled)]
    if real:
        ctx.parking = None
        raise real[0]


_local = threading.local()  # .workers: the pool whose worker this thread is


@contextlib.contextmanager
def blocking() -> Iterator[None]:
    """Around code that may block for long on a worker (user code, a
    blocking wait): the worker stops counting towards ``CORE`` meanwhile.
    Elsewhere, nothing."""
    w: Workers | None = getattr(_local, "workers", None)
    if w is None:
        yield
        return
    w.enter_blocking()
    try:
        yield
    finally:
        w.leave_blocking()


class Workers:
    """Runs segments (callables) on few threads; see the module doc."""

    def __init__(self, core: int = CORE, most: int = MOST) -> None:
        self.core, self.most = core, most
        self._q: collections.deque[Callable[[], None]] = collections.deque()
        self._cv = threading.Condition()
        self._threads = self._idle = self._blocked = 0
        self._ended_at = time.monotonic()
        self._watching = False
        self._names = itertools.count(1)

    def submit(self, fn: Callable[[], None]) -> None:
        with self._cv:
            self._q.append(fn)
            if self._idle > len(self._q) - 1:
                self._cv.notify()
            elif self._threads - self._blocked < self.core:
                self._spawn()
            elif not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="fm-run-watchdog", daemon=True).start()

    @property
    def threads(self) -> int:
        return self._threads

    def enter_blocking(self) -> None:
        with self._cv:
            self._blocked += 1
            if self._q and self._idle == 0 and self._threads - self._blocked < self.core:
                self._spawn()

    def leave_blocking(self) -> None:
        with self._cv:
            self._blocked -= 1

    def _spawn(self) -> None:
        self._threads += 1
        self._ended_at = time.monotonic()  # a new worker gets its chance before the next
        threading.Thread(target=self._loop, name=f"fm-run-worker-{next(self._names)}",
                         daemon=True).start()

    def _loop(self) -> None:
        _local.workers = self
        while True:
            with self._cv:
                while not self._q:
                    self._idle += 1
                    woke = self._cv.wait(LINGER)
                    self._idle -= 1
                    if not woke and not self._q:
                        self._threads -= 1
                        return
                fn = self._q.popleft()
            try:
                fn()
            except BaseException:  # a segment handles its own errors; this is a bug
                log.exception("a flow run's execution raised past its handler")
            with self._cv:
                self._ended_at = time.monotonic()

    def _watch(self) -> None:
        """Add a worker while work is queued and every worker is stuck."""
        while True:
            time.sleep(STUCK / 2)
            with self._cv:
                if not self._q:
                    self._watching = False
                    return
                stuck = time.monotonic() - self._ended_at > STUCK
                if self._idle == 0 and stuck and self._threads < self.most:
                    log.info("flow run workers all busy for %.1fs: adding one (%d)", STUCK,
                             self._threads + 1)
                    self._spawn()


class Timers:
    """The one timer heap of a registry: callables due at wall-clock times,
    earliest first, and the one thread that calls each when it comes. Parked
    runs put their wake time here (``run.timer_fired(gen)``: an entry for a
    run woken earlier stays until its time, and the run ignores a stale
    ``gen``), and so do run deadlines (deadlines.py: ``run.expire``)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], Any], str]] = []
        self._cv = threading.Condition()
        self._count = itertools.count()  # ties: never compare two callables
        self._thread: threading.Thread | None = None
        self._stopped = False

    def at(self, when: float, fn: Callable[[], Any], what: str) -> None:
        """Call ``fn()`` at ``when`` (epoch seconds); ``what`` names it in the
        log should it raise."""
        with self._cv:
            if self._stopped:
                return
            heapq.heappush(self._heap, (when, next(self._count), fn, what))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fm-run-timers", daemon=True)
                self._thread.start()
            self._cv.notify()

    def __len__(self) -> int:
        return len(self._heap)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._cv.wait(self._heap[0][0] - time.time() if self._heap else None)
                if self._stopped:
                    return
                due = []
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for _, _, fn, what in due:
                try:
                    fn()
                except Exception:  # the others still fire; the next kernel retries a run's
                    log.exception("timer for %s failed", what)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()


class Parking:
    """One registry's workers and timers (FlowRegistry.parking)."""

    def __init__(self) -> None:
        self.workers = Workers()
        self.timers = Timers()

    def stop(self) -> None:
        self.timers.stop()


class Wakeable:
    """What a Run does about waking (mixed into run.Run): the wake count
    blocking waits use, and parking: ``parked()`` after a segment ended in
    Park, ``wake()`` from deliveries, ``timer_fired()`` from Timers. The run
    supplies ``_cv``, ``_cancelled``, ``check_cancel`` and ``_resubmit``."""

    id: str
    _cv: threading.Condition
    _cancelled: bool

    def _init_waking(self) -> None:
        self._wakes = 0  # bumped on every wake-up (signal, callback, message, cancel)
        self._parked: Park | None = None  # the Park of the segment that ended parked
        self._park_gen = 0  # which park a timer entry belongs to
        self._watchers: list[Any] = []  # parked runs to wake when this one wakes or ends

    def check_cancel(self) -> None:  # pragma: no cover - run.Run has it
        raise NotImplementedError

    def _resubmit(self) -> None:  # pragma: no cover - run.Run has it
        raise NotImplementedError

    @property
    def wakes(self) -> int:
        """How many wake-ups so far: pass it to wait_wake to miss none."""
        with self._cv:
            return self._wakes

    @property
    def parked(self) -> bool:
        """True while the run waits holding no thread."""
        return self._parked is not None

    @property
    def parked_at(self) -> str | None:
        """What the parked run waits at ("fm.wait_for(go) at position 3"), or None."""
        p = self._parked
        return p.what if p is not None else None

    def wake(self) -> None:
        """A delivery (or cancel, or a watched run's change) for this run:
        blocking waits look again, a parked run that waits on deliveries (or
        is cancelled) executes again, and the runs watching it are woken."""
        with self._cv:
            self._wakes += 1
            self._cv.notify_all()
            watchers, self._watchers = self._watchers, []
            p = self._parked
            go = p is not None and (p.since is not None or self._cancelled)
            if go:
                self._parked = None
        for w in watchers:
            w.wake()
        if go:
            self._resubmit()

    def watch_by(self, other: Any) -> None:
        """Wake ``other`` at this run's next wake-up (a value it set, its end)."""
        with self._cv:
            if other not in self._watchers:
                self._watchers.append(other)

    def timer_fired(self, gen: int) -> None:
        with self._cv:
            go = self._parked is not None and gen == self._park_gen
            if go:
                self._parked = None
        if go:
            self._resubmit()

    def park_segment(self, p: Park, timers: Timers) -> None:
        """The segment ended in ``p``: wait for its time or a wake-up,
        holding no thread (at once again if one came meanwhile)."""
        with self._cv:
            missed = self._cancelled or (p.since is not None and self._wakes != p.since)
            if not missed:
                self._parked = p
                self._park_gen += 1
                gen = self._park_gen
        if missed:
            self._resubmit()
        elif p.wake_at is not None:
            timers.at(p.wake_at, lambda: self.timer_fired(gen), f"waking parked run {self.id}")

    def wait_wake(self, since: int, timeout: float) -> None:
        """Block until a wake-up after the count ``since``, or ``timeout``."""
        with blocking(), self._cv:
            if self._wakes == since:
                self._cv.wait(timeout)

    def pause(self, seconds: float) -> None:
        """Sleep, waking early only to honour cancel()."""
        end = time.monotonic() + seconds
        with blocking():
            while (left := end - time.monotonic()) > 0:
                self.check_cancel()
                with self._cv:
                    self._cv.wait(min(left, 1.0))
        self.check_cancel()
