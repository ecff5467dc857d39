"""The journaled primitives used inside flows (spec: "Python API: Flows"):
now/random/uuid4, patched, sleep, callback, wait_for, map, and the delivery
of callbacks. Each takes the next position of the run's context and replays a
recorded result as steps do (context.py); the run itself is driven through
its small API (set_status, pause, wake, wait_wake, check_cancel).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as dt
import random as _random
import secrets
import time
import uuid
from typing import Any, Callable, Iterable

from ..errors import FlowError, Timeout, UsageError
from . import fanout
from .context import CURRENT_RUN, RunContext, registry, replay
from .journal import Journal
from .parking import can_park, park
from .steps import Step


def _value(name: str, make: Callable[[], Any], dump: Callable[[Any], Any] = lambda v: v,
           load: Callable[[Any], Any] = lambda v: v) -> Any:
    ctx = CURRENT_RUN.get()
    if ctx is None:
        return make()
    p = ctx.take()
    done, stored = replay(ctx.check(p, name))
    if done:
        return load(stored)
    value = make()
    ctx.record(p, name, "ok", 1, result=registry().journal.encode(dump(value), name))
    return value


def now() -> dt.datetime:
    """The current UTC time; inside a flow, the time first recorded here."""
    return _value("fm.now", lambda: dt.datetime.now(dt.timezone.utc), lambda v: v.timestamp(),
                  lambda v: dt.datetime.fromtimestamp(v, dt.timezone.utc))


def random() -> float:
    """random.random(), journaled inside a flow."""
    return _value("fm.random", _random.random)


def uuid4() -> uuid.UUID:
    """uuid.uuid4(), journaled inside a flow."""
    return _value("fm.uuid4", uuid.uuid4, lambda v: v.hex, lambda v: uuid.UUID(v))


def patched(name: str) -> bool:
    """Whether this run takes the code path added under ``name`` (Temporal's
    ``workflow.patched``). A run reaching this point for the first time
    journals a marker here and gets True; replay returns True where the
    marker is. A run whose journal holds something else at this position
    was recorded by the code from before the patch: it gets False, and the
    position stays for that older operation, so the run replays the old
    path. Outside a flow: True (there is nothing older to agree with)."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"fm.patched({name!r}): the name must be a non-empty string")
    ctx = CURRENT_RUN.get()
    if ctx is None:
        return True
    opname = f"fm.patched({name})"
    with ctx.lock:  # look and take in one go: a position taken meanwhile would be skipped
        p = ctx.next
        rec = ctx.latest.get(p)
        if rec is not None and rec["name"] != opname:
            return False
        ctx.next = p + 1
    if rec is None:
        ctx.record(p, opname, "ok", 1, result="true")
    return True


def _maybe_async(ctx: RunContext, fn: Callable[..., Any], *args: Any) -> Any:
    # In an async flow the blocking part runs in a thread and the caller
    # awaits it; the position was taken already, in call order.
    if ctx.is_async:
        return asyncio.to_thread(fn, *args)
    return fn(*args)


def sleep(seconds: float) -> Any:
    """Durable sleep: the wake time is journaled first, so a resumed run
    sleeps only what is left. Awaitable in async flows."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        return time.sleep(seconds)
    p = ctx.take()
    rec = ctx.check(p, "fm.sleep")
    if rec is not None and rec["status"] == "ok":
        return _maybe_async(ctx, lambda: None)
    return _maybe_async(ctx, _sleep, ctx, p, rec, seconds)


def _sleep(ctx: RunContext, p: int, rec: dict[str, Any] | None, seconds: float) -> None:
    if rec is not None and rec["status"] == "sleeping":
        wake = rec["detail"]["wake_at"]
    else:
        wake = time.time() + seconds
        ctx.record(p, "fm.sleep", "sleeping", detail={"wake_at": wake, "seconds": seconds})
    ctx.run.set_status("sleeping")
    if can_park(ctx, wake - time.time()):
        ctx.run.check_cancel()
        park(ctx, wake, None, f"fm.sleep at position {p}")  # raises; replay comes back here
    ctx.run.pause(wake - time.time())
    ctx.record(p, "fm.sleep", "ok", 1, detail={"wake_at": wake, "seconds": seconds})
    ctx.run.set_status("running")


class Callback:
    """A one-shot capability: whoever POSTs JSON to ``url`` resolves it."""

    def __init__(self, ctx: RunContext, cb_id: str):
        self._ctx, self.id = ctx, cb_id

    @property
    def url(self) -> str:
        return f"{registry().base_url()}/callbacks/{self.id}"

    def wait(self, timeout: float | None = None) -> Any:
        """The JSON body posted to ``url``; Timeout after ``timeout`` seconds."""
        return durable_wait(self._ctx, "fm.callback.wait", ("callback", self.id), timeout)

    def __repr__(self) -> str:
        return f"<fm callback {self.id}>"


def callback() -> Callback:
    """A new callback of the current run; its id is journaled, so a resumed
    run waits on the same URL path (the port may change with the kernel)."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        raise FlowError("fm.callback() works inside a flow only: a callback belongs to a run")
    p = ctx.take()
    done, stored = replay(ctx.check(p, "fm.callback"))
    if done:
        return Callback(ctx, stored["id"])
    cb_id = secrets.token_urlsafe(24)  # 192 random bits: the id is the capability
    ctx.record(p, "fm.callback", "ok", 1, result=registry().journal.encode({"id": cb_id}, "fm.callback"))
    reg = registry()
    with reg.lock:
        reg.callbacks[cb_id] = ctx.run.id
    return Callback(ctx, cb_id)


def wait_for(name: str, timeout: float | None = None) -> Any:
    """Wait for the signal ``name`` sent to this run (run.signal, or POST
    /runs/<id>/signals/<name>); signals sent earlier are kept and taken
    in order. Awaitable in async flows."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        raise FlowError(f"fm.wait_for({name!r}) works inside a flow only: signals go to a run")
    return durable_wait(ctx, f"fm.wait_for({name})", ("signal", name), timeout)


# (seq, data) of what a wait may take, oldest first; consumed ones are skipped.
Finder = Callable[[], "list[tuple[int, Any]]"]
_WHAT = {"signal": "signal {!r}", "callback": "callback {}", "message": "a message on topic {!r}"}


def durable_wait(ctx: RunContext, opname: str, source: tuple[str, str], timeout: float | None,
                 find: Finder | None = None) -> Any:
    """Take the oldest item of ``source`` (kind, name) this run has not taken
    yet, waiting for one: the deadline is journaled first and the item's seq
    with the result, so a resumed run waits only what is left and a replay
    returns the same item. ``find`` lists the candidates (default: the
    run's signals of that name, or the callback's delivery)."""
    p = ctx.take()
    rec = ctx.check(p, opname)
    done, value = replay(rec)
    if done:
        return _maybe_async(ctx, lambda: value)
    return _maybe_async(ctx, _wait_blocking, ctx, p, rec, opname, source, timeout, find)


def _wait_blocking(ctx: RunContext, p: int, rec: dict[str, Any] | None, opname: str,
                   source: tuple[str, str], timeout: float | None, find: Finder | None) -> Any:
    run, j = ctx.run, registry().journal
    if rec is not None and rec["status"] == "waiting":
        deadline = rec["detail"].get("deadline")
    else:
        deadline = time.time() + timeout if timeout is not None else None
        ctx.record(p, opname, "waiting", detail={"deadline": deadline, source[0]: source[1]})
    run.set_status("waiting")
    while True:
        wakes = run.wakes
        if find is not None:
            found = find()
        else:
            found = j.signals(run.id, source[1]) if source[0] == "signal" else j.callback_events(source[1])
        fresh = [(seq, data) for seq, data in found if seq not in ctx.consumed]
        if fresh:
            seq, data = fresh[0]
            ctx.record(p, opname, "ok", 1, result=j.encode(data, opname),
                       detail={"event_seq": seq, source[0]: source[1]})
            run.set_status("running")
            return data
        run.check_cancel()
        left = None if deadline is None else deadline - time.time()
        if left is not None and left <= 0:
            what = _WHAT[source[0]].format(source[1])
            err = Timeout(f"run {run.id} of {run.flow_name!r} waited {timeout}s for {what} "
                          f"at position {p} and none came")
            ctx.record(p, opname, "failed", 1, error=Journal.encode_error(err))
            run.set_status("running")
            raise err
        if can_park(ctx, left):  # raises; a delivery or the deadline executes the run again
            park(ctx, deadline, wakes, f"{opname} at position {p}")
        run.wait_wake(wakes, 5.0 if left is None else min(left, 5.0))


def deliver_callback(cb_id: str, data: Any = None) -> bool:
    """Resolve a callback durably; False if it had been resolved already."""
    reg = registry()
    run_id = reg.callbacks.get(cb_id) or reg.journal.callback_run(cb_id)
    if run_id is None:
        raise FlowError(f"no callback {cb_id!r} in this history")
    stored = reg.journal.add_callback(cb_id, run_id, data) is not None
    run = reg.runs.get(run_id)
    if run is not None:
        run.wake()
    return stored


def map(fn: Callable[..., Any], items: Iterable[Any], concurrency: int = 8,
        executor: Any = None) -> Any:
    """``[fn(x) for x in items]`` as parallel steps, one journaled position
    each; on replay only the items without a recorded result run. ``executor``
    (a concurrent.futures Executor, or a dask ``distributed.Client``) runs the
    bodies; results are journaled here. Awaitable in async flows."""
    st = fn if isinstance(fn, Step) else Step(fn)
    items = list(items)
    ctx = CURRENT_RUN.get()
    if ctx is None:  # outside a flow: a plain parallel map, nothing journaled
        if executor is not None and hasattr(executor, "get_executor"):  # a distributed.Client
            return executor.gather(executor.map(st.fn, items, pure=False))
        if executor is not None:
            return list(executor.map(st.fn, items))
        with cf.ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(st.fn, items)) if not st.is_async else \
                list(pool.map(lambda x: asyncio.run(st.fn(x)), items))
    start = ctx.take(len(items))
    results: list[Any] = [None] * len(items)
    todo: list[int] = []
    for i in range(len(items)):
        rec = ctx.check(start + i, st.name)
        if rec is not None and rec["status"] in ("ok", "failed"):
            results[i] = rec
        else:
            todo.append(i)
    return _maybe_async(ctx, fanout.run_map, ctx, st, items, start, results, todo, concurrency, executor)
