"""External tasks (``fm.task``): a journaled step whose body runs in another
process, any language, over HTTP (task_routes.py; the protocol is in
docs/integrations.md).

A task is queued, claimed by a worker with a lease (a random token), may be
heartbeaten, and is completed or failed with that lease. A lease that is not
renewed in time expires: the task is offered again (attempt + 1) until the
step's retries are spent. Only the current lease can finish a task, so the
result is recorded once; a late worker gets LeaseLost (HTTP 409).

Every change is an event in the history (``task_queued``, ``task_claimed``,
``task_heartbeat``, ``task_completed``, ``task_failed``, ``task_expired``,
``task_cancelled``), durable before anyone is told, each carrying the
task's status after it. They go through the flow log like steps (one
write(2); journal.py), not one DuckDB commit each: a task costs three of
them. The ``tasks`` view and the board (task_board.py) are both built from
them, so a kernel that opens the history after a kill knows every task and
lease as they were. The flow's position records the result once the task
has completed (replay returns it, running nothing).

A run waiting for its task holds no thread: it parks (parking.py), and the
board wakes it when the task completes, fails or expires for good. A few
runs at a time wait for a quick task on their thread first (_wait_task says
why).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import hashlib
import uuid
from typing import Any, Callable

from ..errors import Cancelled, FlowError, TaskFailed, Timeout, UsageError
from .context import CURRENT_RUN, RunContext, registry, replay
from .journal import Journal
from .parking import CORE, PARK_AFTER, can_park, park
from .task_board import Task, board

log = logging.getLogger(__name__)

HOLD_MOST = CORE  # runs that may keep their thread while their task is out (_wait_task)
_holders = threading.BoundedSemaphore(HOLD_MOST)


def _maybe_async(ctx: RunContext, fn: Callable[..., Any], *args: Any) -> Any:
    # as in ops.py: in an async flow the blocking wait runs in a thread
    if ctx.is_async:
        return asyncio.to_thread(fn, *args)
    return fn(*args)

# -- inside a flow ------------------------------------------------------------------------

def task(queue: str, payload: Any = None, *, timeout: float | None = None,
         heartbeat: float | None = None, retries: int = 0) -> Any:
    """Have a worker process do a step: queue ``payload`` (JSON) on
    ``queue``, wait durably for a worker's result and return it (replay
    returns the recorded one). ``timeout``: seconds one attempt may take from
    its claim; ``heartbeat``: seconds within which a claimed task must be
    heartbeaten; either lapsing offers the task again, up to ``retries``
    more times. Raises TaskFailed. Awaitable in async flows."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        raise FlowError(f"fm.task({queue!r}) works inside a flow only: a task is a step of a run")
    _validate(queue, payload, timeout, heartbeat, retries)
    p = ctx.take()
    opname = f"fm.task({queue})"
    rec = ctx.check(p, opname)
    done, value = replay(rec)
    if done:
        return _maybe_async(ctx, lambda: value)
    spec = {"queue": queue, "payload": payload, "timeout": timeout, "heartbeat": heartbeat,
            "retries": retries}
    return _maybe_async(ctx, _wait_task, ctx, p, rec, opname, spec)


def task_id_of(run_id: str, p: int) -> str:
    """The id of the task at position ``p`` of run ``run_id``: a function of
    them, so a kill after queueing and before the position was journaled
    finds the same task and never queues a second. It is
    ``uuid.uuid5(uuid.NAMESPACE_URL, f"fm-task:{run_id}:{p}").hex``, computed
    without the UUID objects (a tenth of a task's time on the run's thread)."""
    digest = hashlib.sha1(_NAMESPACE + f"fm-task:{run_id}:{p}".encode()).digest()
    n = int.from_bytes(digest[:16], "big")
    n = (n & ~(0xc000 << 48) | 0x8000 << 48) & ~(0xf000 << 64) | 5 << 76  # variant, version 5
    return f"{n:032x}"


_NAMESPACE = uuid.NAMESPACE_URL.bytes


def _validate(queue: Any, payload: Any, timeout: Any, heartbeat: Any, retries: Any) -> None:
    if not isinstance(queue, str) or not queue or "/" in queue or len(queue) > 200:
        raise UsageError(f"fm.task: queue {queue!r} must be a non-empty name without '/'")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"fm.task({queue!r}): the payload must be JSON (it goes to another "
                         f"process over HTTP): {exc}") from None
    for name, v in (("timeout", timeout), ("heartbeat", heartbeat)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise UsageError(f"fm.task({queue!r}): {name}={v!r} must be seconds > 0, or None")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UsageError(f"fm.task({queue!r}): retries={retries!r} must be a whole number >= 0")


def _wait_task(ctx: RunContext, p: int, rec: dict[str, Any] | None, opname: str,
               spec: dict[str, Any]) -> Any:
    run, b = ctx.run, board()
    task_id = task_id_of(run.id, p)
    detail = {"task_id": task_id, "queue": spec["queue"]}
    with registry().journal.collecting() as held:  # written with the task_queued event
        if rec is None or rec["status"] != "waiting":
            ctx.record(p, opname, "waiting", detail=detail)
        run.set_status("waiting")
    b.enqueue(task_id, run.id, p, spec["queue"], spec["payload"], spec["timeout"],
              spec["heartbeat"], spec["retries"], also=held)
    # Held: this run keeps its thread for up to PARK_AFTER, as a short sleep
    # does. Parked, a run executes again from the top when its task is done,
    # replaying its journal: for a flow of many quick tasks that costs more
    # than the task (O(n^2) over the flow). At most HOLD_MOST runs hold on
    # at once, so the threads stay few however many tasks are out.
    held = can_park(ctx) and _holders.acquire(blocking=False)
    until = time.monotonic() + PARK_AFTER
    try:
        while True:
            wakes = run.wakes
            t = b.get(task_id)
            if t.status in ("completed", "failed", "cancelled"):
                return _finish(ctx, p, opname, t, detail)
            left = until - time.monotonic()
            try:
                run.check_cancel()
                if can_park(ctx) and (not held or left <= 0):  # raises; the task's end runs it again
                    park(ctx, None, wakes, f"{opname} (task {task_id}) at position {p}")
            except (Cancelled, Timeout):  # cancelled, or the run's deadline passed
                b.cancel(task_id)  # no worker is to start it now
                raise
            b.expire_due(task_id)  # a wait that cannot park (a direct call) watches its own lease
            run.wait_wake(wakes, min(left, 1.0) if held else 1.0)
    finally:
        if held:
            _holders.release()


def _finish(ctx: RunContext, p: int, opname: str, t: Task, detail: dict[str, Any]) -> Any:
    """Journal the end of task ``t`` at position ``p``: its result, or TaskFailed raised."""
    run, journal = ctx.run, registry().journal
    if t.status == "completed":
        with journal.collecting() as held:  # the step's end and the run's status: one write
            ctx.record(p, opname, "ok", t.attempt, result=journal.encode(t.result, opname),
                       detail={**detail, "worker": t.worker})
            run.set_status("running")
        journal.append_many(held)
        return t.result
    message = (t.error or {}).get("message") if isinstance(t.error, dict) else t.error
    err = TaskFailed(f"task {t.task_id} on queue {t.queue!r} (position {p} of run "
                     f"{run.id}) {t.status} after attempt {t.attempt}: {message}")
    ctx.record(p, opname, "failed", t.attempt, error=Journal.encode_error(err), detail=detail)
    run.set_status("running")
    raise err
