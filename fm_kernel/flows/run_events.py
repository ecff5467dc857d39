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


def has_ended(run: Any) -> bool:
    """Whether ``run`` has ended: here, or as its record says."""
    if run.finished:
        return True
    if run.executing:
        return False
    row = registry().journal.run_row(run.id)
    return row is None or row["status"] in FINISHED_STATUSES


def result_within(run: Any, ctx: RunContext, timeout: float) -> Any:
    """``run.result(timeout)`` in the flow body of ``ctx``: journaled at a
    position of its own, the deadline first, so a caller that parks (or is
    killed) waits only what is left and a replay ends the same way: the
    run's outcome once it ended in time, the recorded Timeout if not. A run
    recorded before this was journaled (by older code) has another operation
    at the position: it waits on its thread as it did then, taking none."""
    opname = f"fm.result({run.id})"
    with ctx.lock:  # look and take in one go, as fm.patched does
        p = ctx.next
        rec = ctx.latest.get(p)
        if rec is not None and rec["name"] != opname:
            return run.outcome(timeout)
        ctx.next = p + 1
    if rec is not None and rec["status"] in ("ok", "failed"):
        replay(rec)  # raises the recorded Timeout
        return run.outcome(0)  # it had ended: its record answers at once
    # (sync in async flows too, as result() always was there: it parks the
    # same way, raising Park out of the body's coroutine)
    return _result_wait(run, ctx, p, rec, opname, timeout)


def _result_wait(run: Any, ctx: RunContext, p: int, rec: dict[str, Any] | None, opname: str,
                 timeout: float) -> Any:
    if rec is not None and rec["status"] == "waiting":
        deadline = rec["detail"]["deadline"]
    else:
        deadline = time.time() + timeout
        ctx.record(p, opname, "waiting", detail={"run_id": run.id, "deadline": deadline})
    while True:
        since, mine = run.wakes, ctx.run.wakes
        run.watch_by(ctx.run)  # before looking: its end meanwhile wakes the caller
        if has_ended(run):
            ctx.record(p, opname, "ok", 1, result="null", detail={"run_id": run.id})
            return run.outcome(0)
        left = deadline - time.time()
        if left <= 0:
            err = Timeout(f"run {run.id} of {run.flow_name!r} is still {run.status} after "
                          f"{timeout:g}s (the timeout given to result() at position {p} of run "
                          f"{ctx.run.id}); call result() again or check run.status")
            ctx.record(p, opname, "failed", 1, error=Journal.encode_error(err))
            raise err
        ctx.run.check_cancel()
        if can_park(ctx, left):  # raises; the run's end or the deadline wakes the caller
            park(ctx, deadline, mine, f"the result of run {run.id} (timeout {timeout:g}s) "
                 f"at position {p}")
        run.wait_wake(since, min(left, 0.5))


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
