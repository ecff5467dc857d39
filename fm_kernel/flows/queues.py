"""Queues with flow control, as DBOS has them: ``fm.Queue(name,
concurrency=, worker_concurrency=, rate=, priority=)``. A run enqueued on a
queue is recorded ``enqueued`` (durable in the flow log before ``enqueue``
returns) and this module's dispatcher thread starts it when the queue's
limits allow: at most ``concurrency`` of its runs going at once, at most
``rate[0]`` starts in any ``rate[1]`` seconds, the lowest priority first
(``priority=True``), else the oldest.

What a restart keeps is all in the run records (``runs.queue``,
``enqueued_at``, ``priority``): the next kernel's queue of that name counts
the runs that had started and not finished against its concurrency (they
resume as any pending run does), the recorded starts of the last period
against its rate, and starts the enqueued ones in order once their flow is
defined.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from typing import Any

from ..errors import UsageError
from .context import CURRENT_RUN, registry, replay
from .journal import ENQUEUED, PENDING_STATUSES
from .run import Run, new_run, run_handle
from .run_ids import once_per_id

# what a queue name may hold (as a run id, and dots)
_RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

log = logging.getLogger(__name__)

_MAX_PRIORITY = 2**31 - 1


def _limit(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise UsageError(f"{what}={value!r}): expected a whole number >= 1, or None for no limit")
    return value


def _rate(rate: Any, name: str) -> tuple[int, float] | None:
    if rate is None:
        return None
    ok = isinstance(rate, (tuple, list)) and len(rate) == 2 and type(rate[0]) is int and rate[0] >= 1 \
        and isinstance(rate[1], (int, float)) and not isinstance(rate[1], bool) \
        and math.isfinite(rate[1]) and rate[1] > 0
    if not ok:
        raise UsageError(f"fm.Queue({name!r}, rate={rate!r}): expected (limit, period_s), "
                         "e.g. rate=(5, 1) for at most 5 starts per second")
    return rate[0], float(rate[1])


class Queue:
    """Runs started in order within limits; see the module doc. Pickles by
    its settings: a restored namespace defines the queue again, and its
    dispatcher takes up the runs the history holds for it."""

    def __init__(self, name: str, concurrency: int | None = None,
                 worker_concurrency: int | None = None, rate: tuple[int, float] | None = None,
                 priority: bool = False, register: bool = True):
        if not isinstance(name, str) or not name or not set(name) <= _RUN_ID_CHARS | {"."}:
            raise UsageError(f"fm.Queue({name!r}): a queue's name is 1 or more letters, digits, "
                             "'.', '_' or '-'")
        self.name = name
        self.concurrency = _limit(concurrency, f"fm.Queue({name!r}, concurrency")
        self.worker_concurrency = _limit(worker_concurrency, f"fm.Queue({name!r}, worker_concurrency")
        self.rate = _rate(rate, name)
        self.priority = bool(priority)
        self._cv = threading.Condition()
        self._waiting: list[tuple[int, float, int, str]] = []  # a heap: the next to start first
        self._rows: dict[str, dict[str, Any]] = {}  # enqueued by an earlier kernel: their records
        self._active: set[str] = set()  # started here or before a restart, not finished
        self._starts: deque[float] = deque()  # start times within the rate's period
        self._order = itertools.count()
        self._kicked = False  # an enqueue here: dispatch even in a script with no on_ready
        self._stopped = False
        self._thread: threading.Thread | None = None
        if register:
            _register(self)

    def __reduce__(self):
        return (_restore, (self.name, self.concurrency, self.worker_concurrency, self.rate,
                           self.priority))

    def __repr__(self) -> str:
        opts = [f"{k}={v!r}" for k, v in (("concurrency", self.concurrency),
                                           ("worker_concurrency", self.worker_concurrency),
                                           ("rate", self.rate)) if v is not None]
        if self.priority:
            opts.append("priority=True")
        return f"<fm queue {self.name}{' ' if opts else ''}{' '.join(opts)}>"

    @property
    def limit(self) -> int | None:
        """How many of its runs this process executes at once: one process
        (a kernel or `fm worker`) holds a history, so the lower of the two."""
        given = [n for n in (self.concurrency, self.worker_concurrency) if n is not None]
        return min(given) if given else None

    def enqueue(self, flow: Any, *args: Any, priority: int | None = None, run_id: str | None = None,
                timeout: float | None = None, **kwargs: Any) -> Run:
        """Enqueue a run of ``flow`` and return its handle at once (status
        ``enqueued`` until the queue starts it). ``priority``: lower starts
        first, on a queue made with ``priority=True`` (none given: 0, the
        first). ``run_id``: once per id, as for ``flow.start``. Inside a flow
        the enqueue is journaled: a replay returns the run enqueued before."""
        return enqueue_once(self, flow, args, kwargs, priority, run_id, timeout)[0]

    # -- the dispatcher ------------------------------------------------------

    def _add(self, run: Run) -> None:
        with self._cv:
            self._push(run.id, run.priority, run.enqueued_at or time.time())
            self._kicked = True
            self._cv.notify()
        self._ensure_thread()

    def _push(self, run_id: str, priority: int | None, enqueued_at: float) -> None:
        key = (priority or 0) if self.priority else 0
        heapq.heappush(self._waiting, (key, enqueued_at, next(self._order), run_id))

    def _ensure_thread(self) -> None:
        with self._cv:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name=f"fm-queue-{self.name}")
                self._thread.start()

    def stop(self) -> None:
        """Start nothing more (a redefined queue, or the registry closing);
        runs already started go on."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _loop(self) -> None:
        with self._cv:  # a kernel resumes pending runs first; a script's enqueue kicks it
            while not (registry().ready or self._kicked or self._stopped):
                self._cv.wait(0.1)
        try:
            self._load()
        except Exception:
            log.exception("queue %r could not read its runs from the history; it starts nothing",
                          self.name)
            return
        while True:
            with self._cv:
                if self._stopped:
                    return
                run_id, delay = self._next()
                if run_id is None:
                    self._cv.wait(delay)
                    continue
            try:
                self._start(run_id)
            except Exception:  # one bad run must not stop the queue
                log.exception("queue %r could not start run %s", self.name, run_id)

    def _load(self) -> None:
        """What the history holds for this queue: runs started and not
        finished (they hold slots), enqueued runs, starts within the rate."""
        j = registry().journal
        rows = j.queue_rows(self.name)
        starts = j.queue_starts(self.name, time.time() - self.rate[1]) if self.rate else []
        with self._cv:
            known = {entry[3] for entry in self._waiting}
            for row in rows:
                if row["status"] == ENQUEUED and row["run_id"] not in known:
                    self._rows[row["run_id"]] = row
                    self._push(row["run_id"], row["priority"], row["enqueued_at"])
                elif row["status"] in PENDING_STATUSES:
                    self._active.add(row["run_id"])
            self._starts.extend(starts)
        for row in rows:
            if row["status"] in PENDING_STATUSES:
                run_handle(row["run_id"]).add_done_callback(self._finished)

    def _finished(self, run: Run) -> None:
        with self._cv:
            self._active.discard(run.id)
            self._cv.notify()

    def _next(self) -> tuple[str | None, float]:
        """(the run to start now, or None and how long to wait). Under _cv."""
        if self.limit is not None and len(self._active) >= self.limit:
            self._reap()
            return None, 1.0
        now = time.time()
        if self.rate is not None:
            limit, period = self.rate
            while self._starts and self._starts[0] <= now - period:
                self._starts.popleft()
            if len(self._starts) >= limit:
                return None, self._starts[0] + period - now + 0.001
        flows, parked, chosen = registry().flows, [], None
        while self._waiting:
            entry = heapq.heappop(self._waiting)
            run = registry().runs.get(entry[3])
            if run is not None and (not run.in_queue or run._cancelled):
                continue  # cancelled while enqueued
            name = run.flow_name if run is not None else self._rows[entry[3]]["flow"]
            if name not in flows:
                parked.append(entry)  # starts once its flow is defined
                continue
            chosen = entry[3]
            break
        for entry in parked:
            heapq.heappush(self._waiting, entry)
        return chosen, (0.5 if parked else 5.0)

    def _reap(self) -> None:
        """Free the slots of active runs that will never call back here: a
        pending run cancelled while no thread executed it (its flow undefined)."""
        for run_id in list(self._active):
            run = registry().runs.get(run_id)
            if run is not None and not run.executing and (run.finished or run._cancelled):
                self._active.discard(run_id)

    def _start(self, run_id: str) -> None:
        reg = registry()
        run = run_handle(run_id)
        row = self._rows.pop(run_id, None)
        with run._end:  # against a cancel() deciding at the same time
            if run.finished or run._cancelled or not run.in_queue:
                return
            if row is not None:  # enqueued by an earlier kernel: its flow and arguments
                run._load(row, reg.flows[row["flow"]])
            else:  # the flow's current definition, as a resumed run gets
                run._flow = reg.flows[run.flow_name]
            run.in_queue, run._started_at = False, time.time()
            run._write("running")
            with self._cv:
                self._active.add(run.id)
                self._starts.append(run._started_at)
        reg.journal.event("run_started", run.id, {"flow": run.flow_name, "queue": self.name,
                                                 "parent": run._parent})
        run.add_done_callback(self._finished)
        run.start_thread()


def _register(q: Queue) -> None:
    """Make ``q`` the queue of its name here, stopping the one it replaces (a
    re-run cell); its dispatcher starts at once (it waits for the kernel to
    have resumed the pending runs)."""
    reg = registry()
    with reg.lock:
        old = reg.queues.get(q.name)
        reg.queues[q.name] = q
    if old is not None and old is not q:
        old.stop()
    q._ensure_thread()


def _restore(name: str, concurrency: int | None, worker_concurrency: int | None,
             rate: tuple[int, float] | None, priority: bool) -> Queue:
    # Registered only when loaded into the live namespace (as runs.restore_flow).
    from ..state.pickling import LOAD_GLOBALS

    return Queue(name, concurrency, worker_concurrency, rate, priority,
                 register=LOAD_GLOBALS.get() is not None)


def live_queue(queue: "Queue | str") -> Queue:
    """The queue of that name this process dispatches (a Queue object the
    user holds may have been replaced by a re-run cell); UsageError if none."""
    name = queue.name if isinstance(queue, Queue) else queue
    q = registry().queues.get(name)
    if q is None:
        if isinstance(queue, Queue):
            _register(queue)
            return queue
        raise UsageError(f"no queue {name!r} is defined here; define it with fm.Queue({name!r}, ...)")
    return q


def enqueue_once(queue: "Queue | str", fl: Any, args: tuple, kwargs: dict,
                 priority: int | None = None, run_id: str | None = None,
                 timeout: float | None = None) -> tuple[Run, bool]:
    """(the run, True if this call enqueued it): see Queue.enqueue."""
    from .deadlines import validate_timeout

    q = live_queue(queue)
    if not hasattr(fl, "fn") or not hasattr(fl, "name"):
        raise UsageError(f"{q!r}.enqueue({fl!r}, ...): expected an @fm.flow function first")
    if priority is not None:
        if not q.priority:
            raise UsageError(f"queue {q.name!r} was made without priority=True; "
                             f"enqueue without priority=, or make it fm.Queue({q.name!r}, "
                             "priority=True)")
        if type(priority) is not int or not 0 <= priority <= _MAX_PRIORITY:
            raise UsageError(f"priority={priority!r}: expected a whole number 0..{_MAX_PRIORITY}")
    timeout = validate_timeout(timeout, fl.name, f"{q.name}.enqueue")
    ctx = CURRENT_RUN.get()
    if ctx is not None:
        if run_id is not None:
            raise UsageError("enqueue(run_id=...) inside a flow: a child run's id is chosen by "
                             "its position already; leave run_id out")
        return _enqueue_child(ctx, q, fl, args, kwargs, priority, timeout), True
    if run_id is None:
        run = new_run(fl, args, kwargs, timeout=timeout, queue=(q.name, priority))
        q._add(run)
        return run, True
    return _enqueue_by_id(q, fl, run_id, args, kwargs, priority, timeout)


def _enqueue_by_id(q: Queue, fl: Any, run_id: str, args: tuple, kwargs: dict,
                   priority: int | None, timeout: float | None) -> tuple[Run, bool]:
    run, made = once_per_id(fl.name, run_id, lambda: new_run(
        fl, args, kwargs, run_id=run_id, timeout=timeout, queue=(q.name, priority)))
    if made:
        q._add(run)
    return run, made


def _enqueue_child(ctx: Any, q: Queue, fl: Any, args: tuple, kwargs: dict,
                   priority: int | None, timeout: float | None) -> Run:
    """An enqueue inside a flow, once (as runs._start_child): the child's id
    is a function of (parent, position), so a kill between enqueuing it and
    journaling the position finds it on replay instead of enqueuing twice."""
    p = ctx.take()
    opname = f"fm.enqueue({q.name}:{fl.name})"
    done, stored = replay(ctx.check(p, opname))
    if done:
        return run_handle(stored["run_id"])
    child_id = uuid.uuid5(uuid.NAMESPACE_URL, f"fm-child:{ctx.run.id}:{p}").hex
    reg = registry()
    if child_id in reg.runs or (ctx.run._resumed and reg.journal.run_row(child_id) is not None):
        child = run_handle(child_id)
    else:
        child = new_run(fl, args, kwargs, run_id=child_id, parent=(ctx.run.id, p), timeout=timeout,
                        queue=(q.name, priority))
        q._add(child)
    ctx.record(p, opname, "ok", 1, result=reg.journal.encode({"run_id": child_id}, opname))
    return child
