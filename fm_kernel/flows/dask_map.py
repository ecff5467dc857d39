"""fm.map's first attempts on a Dask cluster: consecutive items go out in
chunks, one task per chunk, and come back with one result per item.

Where the time went (bench/fanout.py, docs/bench-fanout.md): a Dask task
costs a few ms of CPU across client, scheduler and worker, and on a small
machine that CPU is taken from the bodies; the old loop also slept between
gathers while the workers ran dry. So:

- Items are grouped into **chunks**: a task runs its items one after the
  other on its worker, each with its own step context, and returns one
  outcome (value or exception, and body time) per item. Each item is still a
  journaled step of its own. The chunk size follows a rule (``chunk_size``):
  as many items as take about CHUNK_SECONDS by the body times measured so
  far (the first wave is one item per task, to measure), and never more
  than leaves two tasks per slot of ``concurrency`` for what remains, so the
  end of the map stays balanced across workers.
- ``concurrency`` is the number of tasks in flight: as many bodies may run
  at once. As soon as tasks finish, new ones go out (before their results
  are journaled), then the results of every task finished by then are
  fetched in one ``gather`` and journaled.

A kill of the kernel loses the finished but not yet journaled items of the
tasks in flight (at most ``concurrency`` tasks of about CHUNK_SECONDS each):
they run again when the run resumes, as every unjournaled item does. An item
that raises is a failed attempt of that item alone; its retries (after their
delays) go through the per-item path in ops.py, as do steps with a timeout.
A chunk that fails as a whole (its worker killed too often, a result that
cannot be sent) is split: its items go out again one per task.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import time
from typing import Any, Callable

from .context import RunContext, StepContext
from .steps import Step, retry_delay, settle

# A chunk holds about this many seconds of body time: a task's few ms of
# overhead are then a few % of it, and a kill redoes at most this much
# finished work per task in flight.
CHUNK_SECONDS = 0.2


def worker_body() -> Callable[[Callable[..., Any], dict[str, Any], Any], Any]:
    """``in_step(fn, step_context_dict, x)``: runs ``fn(x)`` on a worker with
    fm.step_context() set (when the worker has fm_kernel; else plain
    ``fn(x)``). Made fresh as a nested function so that cloudpickle sends it
    by value: workers need neither fm_kernel nor the notebook."""
    def in_step(fn: Callable[..., Any], sctx: dict[str, Any], x: Any) -> Any:
        try:
            from fm_kernel.flows.context import CURRENT_STEP as var, StepContext
        except ImportError:
            return fn(x)
        token = var.set(StepContext(**sctx))
        try:
            return fn(x)
        finally:
            var.reset(token)
    return in_step


def chunk_body() -> Callable[..., list[tuple[str, Any, float]]]:
    """``in_chunk(fn, step_context_dicts, xs)``: ``fn(x)`` for each item in
    turn, each in its own step context; returns ("ok", value, seconds) or
    ("error", exception, seconds) per item, so one failing item does not
    take its chunk mates with it. Nested for the reason worker_body is."""
    def sendable(exc: Exception) -> Exception:
        # the chunk's result travels pickled: one exception that cannot be
        # would fail the whole chunk. Dumping is the test (nothing is ever
        # unpickled outside record/trust.py); one that dumps but cannot load
        # fails its chunk, which is then split and sent one item per task.
        import cloudpickle as pickle  # as Dask sends results: a class from a cell goes by value
        try:
            pickle.dumps(exc)
        except Exception:
            return RuntimeError(f"{type(exc).__qualname__}: {exc} (not picklable; sent as text)")
        return exc

    def in_chunk(fn: Callable[..., Any], sctxs: list[dict[str, Any]], xs: list[Any]) -> list[Any]:
        import time as clock
        try:
            from fm_kernel.flows.context import CURRENT_STEP as var, StepContext
        except ImportError:
            var = StepContext = None
        out = []
        for sctx, x in zip(sctxs, xs):
            token = var.set(StepContext(**sctx)) if var is not None else None
            t0 = clock.perf_counter()
            try:
                out.append(("ok", fn(x), clock.perf_counter() - t0))
            except Exception as exc:
                out.append(("error", sendable(exc), clock.perf_counter() - t0))
            finally:
                if token is not None:
                    var.reset(token)
        return out
    return in_chunk


def chunk_size(body_seconds: float | None, remaining: int, concurrency: int) -> int:
    """Items in the next task: about CHUNK_SECONDS of body time (one item
    while no body time has been measured), at most what leaves two tasks
    per slot of ``concurrency`` for the ``remaining`` items, at least 1."""
    if body_seconds is None:
        return 1
    by_time = int(CHUNK_SECONDS / max(body_seconds, 1e-6))
    by_balance = -(-remaining // (2 * max(1, concurrency)))
    return max(1, min(by_time, by_balance))


class _Plan:
    """The items still to send, the mean body time measured so far, and what
    each task in flight carries."""

    def __init__(self, todo: list[int], concurrency: int):
        self.waiting = collections.deque(todo)
        self.concurrency = concurrency
        self.singles: collections.deque[int] = collections.deque()  # from split chunks
        self.body_total, self.bodies = 0.0, 0
        self.tasks: dict[str, tuple[list[int], list[int]]] = {}  # key -> items, attempts

    def take(self) -> list[int]:
        if self.singles:
            return [self.singles.popleft()]
        mean = self.body_total / self.bodies if self.bodies else None
        n = chunk_size(mean, len(self.waiting), self.concurrency)
        return [self.waiting.popleft() for _ in range(min(n, len(self.waiting)))]

    def measured(self, outcome: list[tuple[str, Any, float]]) -> None:
        self.body_total += sum(seconds for _, _, seconds in outcome)
        self.bodies += len(outcome)


def first_attempts(ctx: RunContext, st: Step, items: list[Any], start: int, todo: list[int],
                   concurrency: int, client: Any, results: list[Any],
                   errors: dict[int, BaseException]) -> dict[int, float]:
    """Run one attempt of each item in ``todo`` on ``client``'s cluster.
    Successes go into ``results`` as ("value", v), failures for good into
    ``errors``; returns the items to retry, with the delay before each."""
    from distributed import as_completed

    task = functools.partial(chunk_body(), st.fn)
    plan = _Plan(todo, max(1, concurrency))
    retry: dict[int, float] = {}

    def submit(n: int) -> list[Any]:
        chunks = [c for c in (plan.take() for _ in range(n)) if c]
        if not chunks:
            return []
        attempts = [[ctx.attempts.get(start + i, 0) + 1 for i in c] for c in chunks]
        sctxs = [[dataclasses.asdict(StepContext(ctx.run.id, start + i, st.name, a))
                  for i, a in zip(c, att)] for c, att in zip(chunks, attempts)]
        futures = client.map(task, sctxs, [[items[i] for i in c] for c in chunks], pure=False)
        for f, c, att in zip(futures, chunks, attempts):
            plan.tasks[f.key] = (c, att)
        return futures

    pending = as_completed(submit(plan.concurrency), loop=client.loop)
    try:
        for done in pending.batches():
            ctx.run.check_cancel()
            # A result lost with its worker after it finished is computed
            # again by Dask (we hold the future): wait for it once more.
            lost = [f for f in done if f.status in ("lost", "pending")]
            pending.update(lost)
            done = [f for f in done if f not in lost]
            ok = [f for f in done if f.status == "finished"]
            outcomes = dict(zip([f.key for f in ok], client.gather(ok))) if ok else {}
            for outcome in outcomes.values():
                plan.measured(outcome)
            for f in done:
                if f.key not in outcomes and len(plan.tasks[f.key][0]) > 1:
                    plan.singles.extend(plan.tasks.pop(f.key)[0])  # split: items again, alone
            # The workers get new tasks before the kernel journals; in groups
            # of half the slots, as each submission costs the scheduler a
            # graph update whatever its size (half the slots still hold
            # queued tasks meanwhile).
            free = plan.concurrency - pending.count()
            if free >= max(1, plan.concurrency // 2):
                pending.update(submit(free))
            for f in done:
                if f.key in plan.tasks:
                    _settle_task(ctx, st, start, plan, f, outcomes.get(f.key), results, errors, retry)
    except BaseException:
        client.cancel(list(pending.futures))  # a cancelled run leaves nothing running
        raise
    return retry


def _settle_task(ctx: RunContext, st: Step, start: int, plan: _Plan, future: Any,
                 outcome: list[tuple[str, Any, float]] | None, results: list[Any],
                 errors: dict[int, BaseException], retry: dict[int, float]) -> None:
    """Journal each item of one finished task (``outcome`` None: the task
    failed as a whole, which is an error attempt of its one item)."""
    chunk, attempts = plan.tasks.pop(future.key)
    if outcome is None:  # (a chunk of several items was split instead)
        outcome = [("error", _error(future), 0.0)] * len(chunk)
    now = time.time()
    for i, attempt, (status, value, seconds) in zip(chunk, attempts, outcome):
        try:
            if settle(ctx, start + i, st, attempt, now - seconds, status, value):
                results[i] = ("value", value)
            else:
                retry[i] = retry_delay(st, attempt)
        except Exception as exc:  # failed for good: journaled by settle
            errors[i] = exc


def _error(future: Any) -> BaseException:
    try:
        return future.exception()
    except (Exception, asyncio.CancelledError) as exc:  # cancelled on the cluster
        return exc
