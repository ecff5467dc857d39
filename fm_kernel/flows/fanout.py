"""``fm.map`` inside a flow: its items as futures, so the map's run waits
holding no thread (issue 15; parking.py).

What waits in a map, and what works. An item's attempt is work while it
runs: on a thread of the map's own pool (no executor: the thread runs the
body, as a step body's thread does) or in an executor (a concurrent.futures
Executor, a Dask cluster: no thread of the kernel at all). Between attempts
an item waits out its retry's backoff, and the run waits for its items: that
is waiting, and holds no thread. So a map is a MapJob: it submits items (at
most ``concurrency`` in flight), journals each attempt from its future's
done-callback, puts each retry on the registry's timer heap at its journaled
time, and wakes the run once every item has ended. The run parks meanwhile
(a direct call, which may not park, blocks on the job instead); replay finds
the job by run and position and takes its results. After a kill there is
no job: items without a journaled outcome are submitted again, each retry
at the time journaled for it.

A Dask map's first attempts are gathered in batches by the run's thread
(dask_map.py: per-item futures made small bodies ~1.3x slower): one thread
per map while they run, never one per item; their retries go through the job.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import contextvars
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from ..errors import Timeout
from . import dask_map
from .context import CURRENT_RUN, CURRENT_STEP, RunContext, StepContext, registry, replay
from .parking import Park, blocking, can_park, park
from .steps import Step, settle

log = logging.getLogger(__name__)

# submit(item index, step context of the attempt) -> a future of its body's value
Submit = Callable[[int, StepContext], Any]


class MapJob:
    """The items of one fm.map still to end: see the module doc. ``ctx`` is
    the run context of the execution that started it (its attempts and the
    records it journals go there; a later execution adopts them)."""

    def __init__(self, ctx: RunContext, st: Step, start: int, todo: list[int], concurrency: int,
                 submit: tuple[Submit, Callable[[], None]]) -> None:
        self.ctx, self.st, self.start, self.concurrency = ctx, st, start, max(1, concurrency)
        self._submit, self._close = submit  # close: the map's own pool, if any, goes
        self.lock = threading.Lock()
        self.values: dict[int, Any] = {}
        self.errors: dict[int, BaseException] = {}
        self._ready: collections.deque[int] = collections.deque()
        self._flight: dict[int, tuple[Any, int, float]] = {}  # item -> future, attempt, start
        self._left = len(todo)
        self._stopped = self._pumping = False
        self.done = threading.Event()
        self._timers = registry().parking.timers
        self._todo = todo

    def begin(self) -> None:
        """Submit what may go now; an item whose last attempt failed waits
        for the retry time journaled with it (a resumed run: what is left)."""
        if not self._todo:
            self.done.set()
            self._close()
            return
        for i in self._todo:
            rec = self.ctx.latest.get(self.start + i)
            retry_at = (rec.get("detail") or {}).get("retry_at") if rec is not None else None
            if retry_at is not None and retry_at > time.time():
                self._later(i, retry_at)
            else:
                self._ready.append(i)
        self._pump()

    def _later(self, i: int, when: float) -> None:
        self._timers.at(when, lambda: self._due(i), f"the retry of fm.map item {self.start + i} "
                        f"of run {self.ctx.run.id}")

    def _due(self, i: int) -> None:
        with self.lock:
            if self._stopped:
                return
            self._ready.append(i)
        self._pump()

    def _pump(self) -> None:
        """Submit ready items while fewer than ``concurrency`` are in flight.
        One thread pumps at a time, in a loop rather than by recursion: a
        future done at once calls back into _pump from add_done_callback."""
        with self.lock:
            if self._pumping:
                return  # the pumping thread looks again under the lock before it stops
            self._pumping = True
        try:
            while go := self._reserve():  # (it ends the pumping, under the lock)
                for i, attempt, t0 in go:
                    self._go(i, attempt, t0)
        except BaseException:
            with self.lock:
                self._pumping = False
            raise

    def _reserve(self) -> list[tuple[int, int, float]]:
        """Take ready items into flight (their futures come next), up to the limit."""
        go = []
        with self.lock:
            while self._ready and len(self._flight) < self.concurrency and not self._stopped:
                i = self._ready.popleft()
                attempt, t0 = self.ctx.attempts.get(self.start + i, 0) + 1, time.time()
                self._flight[i] = (None, attempt, t0)
                go.append((i, attempt, t0))
            if not go:
                self._pumping = False  # with the lock held: a later _pump pumps itself
        return go

    def _go(self, i: int, attempt: int, t0: float) -> None:
        sctx = StepContext(self.ctx.run.id, self.start + i, self.st.name, attempt)
        try:
            fut = self._submit(i, sctx)
        except Exception as exc:  # the executor refused it: that attempt failed
            if self._take(i, attempt) is not None:
                self._settle(i, attempt, t0, "error", exc)
            return
        with self.lock:
            if self._flight.get(i, (None, -1))[1] == attempt:
                self._flight[i] = (fut, attempt, t0)
        fut.add_done_callback(lambda f: self._finished(i, attempt, f))
        if self.st.timeout is not None:
            self._timers.at(t0 + self.st.timeout, lambda: self._timed_out(i, attempt),
                            f"the timeout of fm.map item {self.start + i}")

    def _take(self, i: int, attempt: int) -> float | None:
        """Take attempt ``attempt`` of item ``i`` out of flight: its start, or
        None if it is out already (timed out, finished, or the job stopped)."""
        with self.lock:
            cur = self._flight.get(i)
            if self._stopped or cur is None or cur[1] != attempt:
                return None
            del self._flight[i]
            return cur[2]

    def _finished(self, i: int, attempt: int, fut: Any) -> None:
        t0 = self._take(i, attempt)
        if t0 is None:
            return
        try:
            status, value = "ok", fut.result()
        except BaseException as exc:  # noqa: BLE001 - the attempt's error, journaled
            status, value = "error", exc
        self._settle(i, attempt, t0, status, value)
        self._pump()
        self._idle()

    def _idle(self) -> None:
        with self.lock:
            idle = not self._flight
        if idle:  # only backoffs left (or the end): the map's own threads go
            self._close()

    def _timed_out(self, i: int, attempt: int) -> None:
        t0 = self._take(i, attempt)
        if t0 is None:
            return
        err = Timeout(f"step {self.st.name!r} (position {self.start + i} of run {self.ctx.run.id}) "
                      f"did not finish within {self.st.timeout}s on attempt {attempt}; it was "
                      "abandoned (its thread or task may still run)")
        self._settle(i, attempt, t0, "timeout", err)
        self._pump()

    def _settle(self, i: int, attempt: int, t0: float, status: str, value: Any) -> None:
        """Journal the attempt (steps.settle); then the item has ended, or waits to retry."""
        p = self.start + i
        try:
            again = not settle(self.ctx, p, self.st, attempt, t0, status, value)
        except Exception as exc:  # failed for good; journaled by settle
            self._ended(i, error=exc)
            return
        except BaseException:  # a bug: the run must not wait forever for this item
            log.exception("fm.map item %d of run %s could not be journaled", p, self.ctx.run.id)
            self._ended(i, error=RuntimeError(f"fm.map item {p} could not be journaled"))
            return
        if again:
            self._later(i, self.ctx.latest[p]["detail"]["retry_at"])
        else:
            self._ended(i, value=value)

    def _ended(self, i: int, value: Any = None, error: BaseException | None = None) -> None:
        with self.lock:
            if error is not None:
                self.errors[i] = error
            else:
                self.values[i] = value
            self._left -= 1
            last = self._left == 0
        if last:
            self.done.set()
            self._close()
            self.ctx.run.wake()  # the run parked on this job executes again

    def stop(self) -> None:
        """The run was cancelled or timed out: submit nothing more, cancel
        what has not started (a running body finishes, as a step's does)."""
        with self.lock:
            self._stopped = True
            flight, self._flight = list(self._flight.values()), {}
            self._ready.clear()
        for fut, _, _ in flight:
            if fut is not None:
                fut.cancel()
        self.done.set()
        self._close()

    def wait(self, ctx: RunContext) -> None:
        """Until every item has ended: parked if ``ctx``'s body may park, else on this thread."""
        n = len(self._todo)
        while True:
            since = ctx.run.wakes
            if self.done.is_set():
                return
            ctx.run.check_cancel()
            if can_park(ctx):
                park(ctx, None, since, f"fm.map ({n} items from position {self.start})")
            with blocking():
                self.done.wait(1.0)


def submitter(st: Step, items: list[Any], concurrency: int, executor: Any,
              in_step: Any = None) -> tuple[Submit, Callable[[], None]]:
    """(submit, close) for the map's items: on ``executor`` (its futures;
    ``in_step``: dask_map.worker_body, for a Dask client's executor), or on a
    pool of the map's own (a thread per attempt for steps with a timeout, so
    an abandoned attempt does not hold a pool thread)."""
    if executor is not None:
        if in_step is not None:
            return (lambda i, sctx: executor.submit(in_step, st.fn, dataclasses.asdict(sctx), items[i]),
                    lambda: None)
        return lambda i, sctx: executor.submit(st.fn, items[i]), lambda: None
    base = contextvars.copy_context()

    def body(i: int, sctx: StepContext) -> Callable[[], Any]:
        def inside() -> Any:
            CURRENT_RUN.set(None)  # a step's own calls are plain calls, not journal entries
            CURRENT_STEP.set(sctx)
            if st.is_async:
                return asyncio.run(st.fn(items[i]))
            return st.fn(items[i])
        return lambda: base.copy().run(inside)

    if st.timeout is not None:
        return lambda i, sctx: _on_a_thread(body(i, sctx), sctx.name), lambda: None
    pool = _OwnPool(concurrency)
    return lambda i, sctx: pool.submit(body(i, sctx)), pool.close


class _OwnPool:
    """A map's own threads, made when an item is submitted and let go when
    none is in flight (close), so items in backoff keep no idle thread."""

    def __init__(self, size: int) -> None:
        self._size, self._pool, self._lock = max(1, size), None, threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> cf.Future:
        with self._lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self._size, thread_name_prefix="fm-map")
            return self._pool.submit(fn)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


def _on_a_thread(fn: Callable[[], Any], name: str) -> cf.Future:
    fut: cf.Future = cf.Future()

    def target() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - the attempt's error
            fut.set_exception(exc)

    threading.Thread(target=target, name=f"fm-step-{name}", daemon=True).start()
    return fut


def run_map(ctx: RunContext, st: Step, items: list[Any], start: int, results: list[Any],
            todo: list[int], concurrency: int, executor: Any) -> list[Any]:
    """fm.map in the flow body of ``ctx`` (ops.map took the positions and
    put the recorded items in ``results``): the results in item order, or
    the first item's final error once every item has ended."""
    reg = registry()
    key = (ctx.run.id, start)
    with reg.lock:
        job = reg.maps.get(key)  # started by an execution before a park
    try:
        if job is None:
            job = _begin(ctx, st, items, start, results, todo, concurrency, executor)
            with reg.lock:
                reg.maps[key] = job
        job.wait(ctx)
    except Park:
        raise  # the job goes on; it wakes the run when its items have ended
    except BaseException:
        if job is not None:
            job.stop()
        with reg.lock:
            reg.maps.pop(key, None)
        raise
    with reg.lock:
        reg.maps.pop(key, None)
    ctx.adopt(job.ctx, range(start, start + len(items)))
    # Each result is durable already (the flow log); checkpointing here also
    # puts the whole fan-out in DuckDB, in a few batched commits, before the
    # flow uses it, so SQL over run_steps agrees with what the flow saw.
    reg.journal.flush()
    out = []
    for i, r in enumerate(results):
        if i in job.errors:
            raise job.errors[i]
        out.append(job.values[i] if i in job.values else replay(r)[1])
    return out


def _begin(ctx: RunContext, st: Step, items: list[Any], start: int, results: list[Any],
           todo: list[int], concurrency: int, executor: Any) -> MapJob:
    in_step = None
    values: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}
    if executor is not None and hasattr(executor, "get_executor"):  # a distributed.Client
        if st.timeout is None and todo:
            todo = sorted(dask_map.first_attempts(ctx, st, items, start, todo, concurrency,
                                                  executor, results, errors))
            values = {i: r[1] for i, r in enumerate(results) if isinstance(r, tuple)}
        # pure=False: every attempt is a task of its own. With dask's default
        # (pure=True) equal items share one task, so a step runs once for all
        # of them, and a retry is handed the failed attempt's erred future.
        executor, in_step = executor.get_executor(pure=False), dask_map.worker_body()
    job = MapJob(ctx, st, start, todo, concurrency,
                 submitter(st, items, concurrency, executor, in_step))
    job.values.update(values)
    job.errors.update(errors)
    job.begin()
    return job
