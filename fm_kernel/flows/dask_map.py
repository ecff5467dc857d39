"""fm.map's first attempts on a Dask cluster, submitted and gathered in
batches.

Submitting each item as a task of its own and waiting on its result from a
thread costs a scheduler message and a result round trip per item; on 200
bodies of ~25 ms over two local workers that made fm.map take 1.3x as long
as ``client.map`` alone. Here up to ``concurrency`` items are in flight;
finished tasks are gathered in one call at most every GATHER_EVERY seconds
and journaled as they arrive, and as many new items go out in one
``client.map``. An attempt
that fails is journaled here; its retries (after their delays) go through
the per-item path in ops.py, as do steps with a timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any, Callable

from .context import RunContext, StepContext
from .steps import Step, retry_delay, settle


# Results are fetched at most this often (seconds): one gather per finished
# task cost the kernel's Dask loop ~3 ms of CPU each, taken from the workers
# on a small machine. A kill loses at most this much more finished work.
GATHER_EVERY = 0.1


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


def first_attempts(ctx: RunContext, st: Step, items: list[Any], start: int, todo: list[int],
                   concurrency: int, client: Any, results: list[Any],
                   errors: dict[int, BaseException]) -> dict[int, float]:
    """Run one attempt of each item in ``todo`` on ``client``'s cluster.
    Successes go into ``results`` as ("value", v), failures for good into
    ``errors``; returns the items to retry, with the delay before each."""
    from distributed import as_completed

    task = functools.partial(worker_body(), st.fn)
    waiting = iter(todo)
    submitted: dict[str, tuple[int, int, float]] = {}  # key -> item, attempt, start time
    retry: dict[int, float] = {}

    def submit(n: int) -> list[Any]:
        batch = [i for _, i in zip(range(n), waiting)]
        if not batch:
            return []
        attempts = [ctx.attempts.get(start + i, 0) + 1 for i in batch]
        sctxs = [dataclasses.asdict(StepContext(ctx.run.id, start + i, st.name, a))
                 for i, a in zip(batch, attempts)]
        futures = client.map(task, sctxs, [items[i] for i in batch], pure=False)
        now = time.time()
        for f, i, a in zip(futures, batch, attempts):
            submitted[f.key] = (i, a, now)
        return futures

    pending = as_completed(submit(max(1, concurrency)), loop=client.loop)
    try:
        for done in pending.batches():
            ctx.run.check_cancel()
            if pending.count():
                time.sleep(GATHER_EVERY)
                done += pending.next_batch(block=False)
            # A result lost with its worker after it finished is computed
            # again by Dask (we hold the future): wait for it once more.
            lost = [f for f in done if f.status in ("lost", "pending")]
            done = [f for f in done if f not in lost]
            pending.update(lost)
            ok = [f for f in done if f.status == "finished"]
            values = dict(zip([f.key for f in ok], client.gather(ok))) if ok else {}
            for f in done:
                i, attempt, t0 = submitted.pop(f.key)
                status, value = ("ok", values[f.key]) if f.key in values else ("error", _error(f))
                try:
                    if settle(ctx, start + i, st, attempt, t0, status, value):
                        results[i] = ("value", value)
                    else:
                        retry[i] = retry_delay(st, attempt)
                except Exception as exc:  # failed for good: journaled by settle
                    errors[i] = exc
            pending.update(submit(len(done)))
    except BaseException:
        client.cancel(list(pending.futures))  # a cancelled run leaves nothing running
        raise
    return retry


def _error(future: Any) -> BaseException:
    try:
        return future.exception()
    except (Exception, asyncio.CancelledError) as exc:  # cancelled on the cluster
        return exc
