"""What reaches a run from outside and what it publishes: whether a run can
still take a signal or message (check_open), signals (deliver_signal), and
fm.set_event's values read through a handle (Run.get_event, waiting,
journaled inside a flow). Apart from run.py so a Run stays one module's
worth of code."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import NoSuchRun, RunFinished, Timeout
from .context import CURRENT_RUN, RunContext, registry, replay
from .journal import FINISHED_STATUSES, Journal
from .parking import Park, can_park, park


def get_event(run: Any, key: str, timeout: float | None = None) -> Any:
    """Run.get_event of ``run`` (its docstring says what it answers)."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        return _event(run, key, timeout)
    p = ctx.take()
    rec = ctx.check(p, f"fm.get_event({key})")
    done, value = replay(rec)
    if done:
        return asyncio.to_thread(lambda: value) if ctx.is_async else value
    if ctx.is_async:
        return asyncio.to_thread(_journaled_event, run, ctx, p, rec, key, timeout)
    return _journaled_event(run, ctx, p, rec, key, timeout)


def _journaled_event(run: Any, ctx: RunContext, p: int, rec: dict[str, Any] | None, key: str,
                     timeout: float | None) -> Any:
    opname, detail = f"fm.get_event({key})", {"run_id": run.id, "key": key}
    if rec is not None and rec["status"] == "waiting":
        deadline = rec["detail"].get("deadline")
    else:
        deadline = None if timeout is None else time.time() + timeout
        ctx.record(p, opname, "waiting", detail={**detail, "deadline": deadline})
    ctx.run.set_status("waiting")
    try:
        value = _event(run, key, None if deadline is None else max(0.0, deadline - time.time()),
                       waiter=ctx)
    except Park:
        raise  # still waiting, holding no thread
    except Timeout as exc:
        ctx.run.set_status("running")
        ctx.record(p, opname, "failed", 1, error=Journal.encode_error(exc))
        raise
    except BaseException:
        ctx.run.set_status("running")
        raise
    ctx.run.set_status("running")
    ctx.record(p, opname, "ok", 1, result=registry().journal.encode(value, opname), detail=detail)
    return value


def _event(run: Any, key: str, timeout: float | None, waiter: RunContext | None = None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        since = run.wakes  # set_event wakes a run's handle; polled as well
        mine = waiter.run.wakes if waiter is not None else 0
        if waiter is not None and can_park(waiter):
            run.watch_by(waiter.run)  # before looking: a value set meanwhile wakes the waiter
        status, text = event_state(run.id, key)
        if text is not None:
            return registry().journal.decode(text)
        if status in FINISHED_STATUSES:
            raise Timeout(f"run {run.id} of {run.flow_name!r} finished ({status}) without "
                          f"setting event {key!r}; it never will")
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise Timeout(f"run {run.id} of {run.flow_name!r} ({status}) has not set event "
                          f"{key!r} after {timeout:g}s; call get_event again to wait longer")
        if waiter is not None:  # a flow waiting here can still be cancelled
            waiter.run.check_cancel()
            if can_park(waiter, left):  # raises; set_event, the run's end or the deadline wake it
                park(waiter, None if left is None else time.time() + left, mine,
                     f"get_event({key!r}) of run {run.id}")
        run.wait_wake(since, 0.5 if left is None else min(left, 0.5))


def event_state(run_id: str, key: str) -> tuple[str, str | None]:
    """(the run's status, the JSON text of the latest value it set for
    ``key``, or None). The status is read first: a run that had finished by
    then had set every value it ever will."""
    reg = registry()
    run = reg.runs.get(run_id)
    if run is not None and run.executing:
        status = run.status
    else:
        row = reg.journal.run_row(run_id)
        if row is None:
            raise NoSuchRun(run_id)
        status = row["status"]
    return status, reg.journal.run_event(run_id, key)


def check_open(run_id: str, what: str) -> Any:
    """The live handle of ``run_id`` (None if this process has none) when
    the run may still take ``what`` ("signal 'go'"); NoSuchRun for an
    unknown run, RunFinished for a finished one."""
    reg = registry()
    run = reg.runs.get(run_id)
    if run is None or not run.executing:
        row = reg.journal.run_row(run_id)
        if row is None:
            raise NoSuchRun(run_id)
        status = row["status"]
    else:
        status = run.status
    if status in FINISHED_STATUSES or (run is not None and run.finished):
        raise RunFinished(run_id, status, what)
    return run


def deliver_signal(run_id: str, name: str, data: Any = None, key: str | None = None) -> int:
    """Store a signal for a run durably and wake the run if it waits here
    (``key``: see Journal.add_signal)."""
    run = check_open(run_id, f"signal {name!r}")
    seq = registry().journal.add_signal(run_id, name, data, key)
    if run is not None:
        run.wake()
    return seq
