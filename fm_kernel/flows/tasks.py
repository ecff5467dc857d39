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
them. The ``tasks`` view and the board below are both built from them, so a kernel that opens the history after a kill knows
every task and lease as they were. The flow's position records the result
once the task has completed (replay returns it, running nothing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import Cancelled, FlowError, LeaseLost, NoSuchTask, TaskFailed, Timeout, UsageError
from .context import CURRENT_RUN, RunContext, registry, replay
from .journal import Journal
from .parking import can_park, park

log = logging.getLogger(__name__)


def _maybe_async(ctx: RunContext, fn: Callable[..., Any], *args: Any) -> Any:
    # as in ops.py: in an async flow the blocking wait runs in a thread
    if ctx.is_async:
        return asyncio.to_thread(fn, *args)
    return fn(*args)

DEFAULT_LEASE = 300.0  # seconds a claim holds without heartbeat or timeout
KINDS = ("task_queued", "task_claimed", "task_heartbeat", "task_completed", "task_failed",
         "task_expired", "task_cancelled")
FINISHED = ("completed", "failed", "cancelled")


@dataclass
class Task:
    task_id: str
    run_id: str
    position: int
    queue: str
    payload: Any
    timeout: float | None
    heartbeat: float | None
    retries: int
    status: str = "queued"
    attempt: int = 0
    worker: str | None = None
    lease: str | None = None
    lease_until: float | None = None
    claimed_at: float | None = None
    result: Any = None
    error: Any = None
    done_lease: str | None = None  # the lease that completed it (a repeated completion is no error)

    def lease_end(self, now: float) -> float:
        """When a lease renewed at ``now`` runs out: a heartbeat interval (or
        the timeout, or DEFAULT_LEASE) on, never past claim + timeout."""
        end = now + (self.heartbeat or self.timeout or DEFAULT_LEASE)
        if self.timeout is not None and self.claimed_at is not None:
            end = min(end, self.claimed_at + self.timeout)
        return end


def _apply(tasks: dict[str, Task], kind: str, run_id: str | None, p: dict[str, Any]) -> None:
    """One event onto the board (live, and when loading the history)."""
    if kind == "task_queued":
        tasks.setdefault(p["task_id"], Task(
            p["task_id"], run_id or "", p["position"], p["queue"], p.get("payload"),
            p.get("timeout"), p.get("heartbeat"), p.get("retries", 0)))
        return
    t = tasks.get(p["task_id"])
    if t is None:
        return
    t.status = p["status"]
    for field in ("attempt", "worker", "lease", "lease_until", "claimed_at", "result", "error"):
        if field in p:
            setattr(t, field, p[field])
    if kind == "task_completed":
        t.done_lease = p.get("lease")
    if t.status != "claimed":
        t.lease = None


class TaskBoard:
    """The tasks of one history: in memory, rebuilt from its events."""

    def __init__(self, journal: Journal):
        self.journal, self.store = journal, journal.store
        self.lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        self.version = 0  # bumped on every change
        # called (on the recording thread) when a task becomes claimable, so a
        # waiting claim answers at once instead of at its next look
        self.listeners: set[Callable[[], None]] = set()
        journal.flush()
        res = self.store.query("SELECT kind, run_id, payload FROM fm_events"
                               " WHERE list_contains(?, kind) ORDER BY seq", [list(KINDS)])
        for kind, run_id, payload in res.rows:
            _apply(self.tasks, kind, run_id, json.loads(payload) if isinstance(payload, str) else payload)
        # the unfinished ones, which claims look through (finished ones stay
        # in tasks: a repeated completion is answered from there)
        self.open = {i: t for i, t in self.tasks.items() if t.status not in FINISHED}

    def _record(self, kind: str, t: Task, **fields: Any) -> None:
        """Make the event durable first, then change the board (under self.lock)."""
        payload = {"task_id": t.task_id, **fields}
        self.journal.event(kind, t.run_id, payload)
        _apply(self.tasks, kind, t.run_id, payload)
        if fields.get("status") in FINISHED:
            self.open.pop(t.task_id, None)
        else:
            self.open[t.task_id] = self.tasks[t.task_id]
        self.version += 1
        if fields.get("status") == "queued":
            for listener in list(self.listeners):
                listener()
        if kind != "task_claimed" and kind != "task_heartbeat":
            run = registry().runs.get(t.run_id)
            if run is not None:
                run.wake()

    def enqueue(self, task_id: str, run_id: str, position: int, queue: str, payload: Any,
                timeout: float | None, heartbeat: float | None, retries: int) -> None:
        with self.lock:
            if task_id in self.tasks:  # queued before a kill: the same task
                return
            t = Task(task_id, run_id, position, queue, payload, timeout, heartbeat, retries)
            self._record("task_queued", t, status="queued", position=position, queue=queue,
                         payload=payload, timeout=timeout, heartbeat=heartbeat, retries=retries)

    def get(self, task_id: str) -> Task:
        with self.lock:
            t = self.tasks.get(task_id)
            if t is None:
                raise NoSuchTask(task_id)
            return Task(**vars(t))

    def has_work(self, queue: str) -> bool:
        """Cheap: is there a task to offer on ``queue`` (queued, or its lease run out)?"""
        now = time.time()
        with self.lock:
            return any(t.queue == queue and (t.status == "queued" or (
                t.status == "claimed" and t.lease_until is not None and t.lease_until < now))
                for t in self.open.values())

    def claim(self, queue: str, worker: str) -> dict[str, Any] | None:
        now = time.time()
        with self.lock:
            self._expire_due(now)
            t = next((t for t in self.open.values() if t.queue == queue and t.status == "queued"),
                     None)
            if t is None:
                return None
            lease = secrets.token_urlsafe(18)
            t.claimed_at = now  # lease_end reads it
            self._record("task_claimed", t, status="claimed", attempt=t.attempt + 1, worker=worker,
                         lease=lease, claimed_at=now, lease_until=t.lease_end(now))
            return {"task_id": t.task_id, "lease": lease, "attempt": t.attempt, "run_id": t.run_id,
                    "queue": queue, "lease_until": t.lease_until, "heartbeat": t.heartbeat,
                    "payload": t.payload}

    def _current(self, task_id: str, lease: Any, now: float) -> Task:
        t = self.tasks.get(task_id)
        if t is None:
            raise NoSuchTask(task_id)
        self._expire_due(now, only=t)
        if t.status != "claimed" or not isinstance(lease, str) or lease != t.lease:
            why = f"it is {t.status}" if t.status != "claimed" else \
                f"it was offered again and is now attempt {t.attempt}"
            raise LeaseLost(f"task {task_id}: this lease is no longer the task's ({why}); "
                            "drop the work, and claim again")
        return t

    def heartbeat(self, task_id: str, lease: Any) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            t = self._current(task_id, lease, now)
            self._record("task_heartbeat", t, status="claimed", lease_until=t.lease_end(now))
            return {"task_id": task_id, "status": t.status, "lease_until": t.lease_until}

    def complete(self, task_id: str, lease: Any, result: Any) -> bool:
        """True once recorded; False for a repeat of the completion that was."""
        with self.lock:
            t = self.tasks.get(task_id)
            if t is not None and t.status == "completed" and lease == t.done_lease:
                return False
            t = self._current(task_id, lease, time.time())
            self._record("task_completed", t, status="completed", lease=lease, result=result)
            return True

    def fail(self, task_id: str, lease: Any, error: Any, retryable: bool) -> str:
        """The status after the failure: queued (offered again) or failed."""
        with self.lock:
            t = self._current(task_id, lease, time.time())
            again = bool(retryable) and t.attempt <= t.retries
            self._record("task_failed", t, status="queued" if again else "failed",
                         error={"message": error, "attempt": t.attempt, "retryable": bool(retryable)})
            return t.status

    def cancel(self, task_id: str) -> None:
        with self.lock:
            t = self.tasks.get(task_id)
            if t is not None and t.status not in FINISHED:
                self._record("task_cancelled", t, status="cancelled")

    def expire_due(self, task_id: str | None = None) -> None:
        """Offer again (or fail) claimed tasks whose lease ran out: all, or
        ``task_id`` alone (what its waiting run checks: O(1), not O(open))."""
        with self.lock:
            t = self.tasks.get(task_id) if task_id is not None else None
            if task_id is None or t is not None:
                self._expire_due(time.time(), only=t)

    def _expire_due(self, now: float, only: Task | None = None) -> None:
        for t in [only] if only is not None else list(self.open.values()):
            if t.status == "claimed" and t.lease_until is not None and t.lease_until < now:
                again = t.attempt <= t.retries
                msg = (f"the lease of attempt {t.attempt} (worker {t.worker!r}) expired: no "
                       f"completion{' or heartbeat' if t.heartbeat else ''} in time")
                self._record("task_expired", t, status="queued" if again else "failed",
                             error={"message": msg, "attempt": t.attempt, "retryable": True})


_board_lock = threading.Lock()


def board() -> TaskBoard:
    """The TaskBoard of this process's history (made on first use)."""
    reg = registry()
    journal = reg.journal
    with _board_lock:
        b = getattr(reg, "_task_board", None)
        if b is None or b.journal is not journal:
            b = TaskBoard(journal)
            reg._task_board = b  # type: ignore[attr-defined]
        return b


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
    # A function of (run, position): a kill after queueing and before this
    # position was journaled finds the same task, never queues a second.
    task_id = uuid.uuid5(uuid.NAMESPACE_URL, f"fm-task:{run.id}:{p}").hex
    b.enqueue(task_id, run.id, p, spec["queue"], spec["payload"], spec["timeout"],
              spec["heartbeat"], spec["retries"])
    detail = {"task_id": task_id, "queue": spec["queue"]}
    if rec is None or rec["status"] != "waiting":
        ctx.record(p, opname, "waiting", detail=detail)
    run.set_status("waiting")
    while True:
        wakes = run.wakes
        t = b.get(task_id)
        if t.status == "completed":
            ctx.record(p, opname, "ok", t.attempt, result=registry().journal.encode(t.result, opname),
                       detail={**detail, "worker": t.worker})
            run.set_status("running")
            return t.result
        if t.status in ("failed", "cancelled"):
            message = (t.error or {}).get("message") if isinstance(t.error, dict) else t.error
            err = TaskFailed(f"task {task_id} on queue {spec['queue']!r} (position {p} of run "
                             f"{run.id}) {t.status} after attempt {t.attempt}: {message}")
            ctx.record(p, opname, "failed", t.attempt, error=Journal.encode_error(err), detail=detail)
            run.set_status("running")
            raise err
        # Park (parking.py) until the task's next event wakes the run (every
        # one but a claim or heartbeat does: TaskBoard._record), or until the
        # lease of a claimed task runs out, to offer it again.
        lease_end = t.lease_until if t.status == "claimed" else None
        try:
            run.check_cancel()
            if can_park(ctx, None if lease_end is None else lease_end - time.time()):
                park(ctx, lease_end, wakes, f"{opname} (task {task_id}) at position {p}")
        except (Cancelled, Timeout):  # cancelled, or the run's deadline passed
            b.cancel(task_id)  # no worker is to start it now
            raise
        b.expire_due(task_id)
        run.wait_wake(wakes, 1.0)
