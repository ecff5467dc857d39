"""The journaled primitives used inside flows (spec: "Python API: Flows"):
now/random/uuid4, sleep, callback, wait_for, map, and the delivery of
signals and callbacks. Each takes the next position of the run's context
and replays a recorded result as flows.py's steps do; flows.py re-exports
every name here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import dataclasses
import datetime as dt
import random as _random
import secrets
import time
import uuid
from typing import Any, Callable, Iterable

from .core import (
    _CTX, _RUNS, _STEP, FlowError, NoSuchRun, Step, Timeout, _attempts, _base_url, _Ctx, _lock,
    _replay, journal,
)
from . import dask_map as flow_dask
from .journal import Journal


def _value(name: str, make: Callable[[], Any], dump: Callable[[Any], Any] = lambda v: v,
           load: Callable[[Any], Any] = lambda v: v) -> Any:
    ctx = _CTX.get()
    if ctx is None:
        return make()
    p = ctx.take()
    done, stored = _replay(ctx.check(p, name))
    if done:
        return load(stored)
    value = make()
    ctx.record(p, name, "ok", 1, result=journal().encode(dump(value), name))
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


def _maybe_async(ctx: _Ctx, fn: Callable[..., Any], *args: Any) -> Any:
    # In an async flow the blocking part runs in a thread and the caller
    # awaits it; the position was taken already, in call order.
    if ctx.is_async:
        return asyncio.to_thread(fn, *args)
    return fn(*args)


def sleep(seconds: float) -> Any:
    """Durable sleep: the wake time is journaled first, so a resumed run
    sleeps only what is left. Awaitable in async flows."""
    ctx = _CTX.get()
    if ctx is None:
        return time.sleep(seconds)
    p = ctx.take()
    rec = ctx.check(p, "fm.sleep")
    if rec is not None and rec["status"] == "ok":
        return _maybe_async(ctx, lambda: None)
    return _maybe_async(ctx, _sleep, ctx, p, rec, seconds)


def _sleep(ctx: _Ctx, p: int, rec: dict[str, Any] | None, seconds: float) -> None:
    if rec is not None and rec["status"] == "sleeping":
        wake = rec["detail"]["wake_at"]
    else:
        wake = time.time() + seconds
        ctx.record(p, "fm.sleep", "sleeping", detail={"wake_at": wake, "seconds": seconds})
    ctx.run._set_status("sleeping")
    ctx.run._pause(wake - time.time())
    ctx.record(p, "fm.sleep", "ok", 1, detail={"wake_at": wake, "seconds": seconds})
    ctx.run._set_status("running")


class Callback:
    """A one-shot capability: whoever POSTs JSON to ``url`` resolves it."""

    def __init__(self, ctx: _Ctx, cb_id: str):
        self._ctx, self.id = ctx, cb_id

    @property
    def url(self) -> str:
        return f"{_base_url()}/callbacks/{self.id}"

    def wait(self, timeout: float | None = None) -> Any:
        """The JSON body posted to ``url``; Timeout after ``timeout`` seconds."""
        return _wait(self._ctx, "fm.callback.wait", ("callback", self.id), timeout)

    def __repr__(self) -> str:
        return f"<fm callback {self.id}>"


def callback() -> Callback:
    """A new callback of the current run; its id is journaled, so a resumed
    run waits on the same URL path (the port may change with the kernel)."""
    ctx = _CTX.get()
    if ctx is None:
        raise FlowError("fm.callback() works inside a flow only: a callback belongs to a run")
    p = ctx.take()
    done, stored = _replay(ctx.check(p, "fm.callback"))
    if done:
        return Callback(ctx, stored["id"])
    cb_id = secrets.token_urlsafe(24)  # 192 random bits: the id is the capability
    ctx.record(p, "fm.callback", "ok", 1, result=journal().encode({"id": cb_id}, "fm.callback"))
    with _lock:
        _CALLBACKS[cb_id] = ctx.run.id
    return Callback(ctx, cb_id)


def wait_for(name: str, timeout: float | None = None) -> Any:
    """Wait for the signal ``name`` sent to this run (run.signal, or POST
    /runs/<id>/signals/<name>); signals sent earlier are kept and taken
    in order. Awaitable in async flows."""
    ctx = _CTX.get()
    if ctx is None:
        raise FlowError(f"fm.wait_for({name!r}) works inside a flow only: signals go to a run")
    return _wait(ctx, f"fm.wait_for({name})", ("signal", name), timeout)


def _wait(ctx: _Ctx, opname: str, source: tuple[str, str], timeout: float | None) -> Any:
    p = ctx.take()
    rec = ctx.check(p, opname)
    done, value = _replay(rec)
    if done:
        return _maybe_async(ctx, lambda: value)
    return _maybe_async(ctx, _wait_blocking, ctx, p, rec, opname, source, timeout)


def _wait_blocking(ctx: _Ctx, p: int, rec: dict[str, Any] | None, opname: str,
                   source: tuple[str, str], timeout: float | None) -> Any:
    run, j = ctx.run, journal()
    if rec is not None and rec["status"] == "waiting":
        deadline = rec["detail"].get("deadline")
    else:
        deadline = time.time() + timeout if timeout is not None else None
        ctx.record(p, opname, "waiting", detail={"deadline": deadline, source[0]: source[1]})
    run._set_status("waiting")
    while True:
        with run._cv:
            gen = run._gen
        found = j.signals(run.id, source[1]) if source[0] == "signal" else j.callback_events(source[1])
        fresh = [(seq, data) for seq, data in found if seq not in ctx.consumed]
        if fresh:
            seq, data = fresh[0]
            ctx.record(p, opname, "ok", 1, result=j.encode(data, opname),
                       detail={"event_seq": seq, source[0]: source[1]})
            run._set_status("running")
            return data
        run._check_cancel()
        left = None if deadline is None else deadline - time.time()
        if left is not None and left <= 0:
            what = f"signal {source[1]!r}" if source[0] == "signal" else f"callback {source[1]}"
            err = Timeout(f"run {run.id} of {run.flow_name!r} waited {timeout}s for {what} "
                          f"at position {p} and none came")
            ctx.record(p, opname, "failed", 1, error=Journal.encode_error(err))
            run._set_status("running")
            raise err
        with run._cv:
            if run._gen == gen:
                run._cv.wait(5.0 if left is None else min(left, 5.0))


def deliver_signal(run_id: str, name: str, data: Any = None) -> int:
    """Store a signal for a run durably and wake the run if it waits here."""
    run = _RUNS.get(run_id)
    if run is None and journal().run_row(run_id) is None:
        raise NoSuchRun(run_id)
    seq = journal().add_signal(run_id, name, data)
    if run is not None:
        run._wake()
    return seq


def deliver_callback(cb_id: str, data: Any = None) -> bool:
    """Resolve a callback durably; False if it had been resolved already."""
    run_id = _CALLBACKS.get(cb_id) or journal().callback_run(cb_id)
    if run_id is None:
        raise FlowError(f"no callback {cb_id!r} in this history")
    stored = journal().add_callback(cb_id, run_id, data) is not None
    run = _RUNS.get(run_id)
    if run is not None:
        run._wake()
    return stored


_CALLBACKS: dict[str, str] = {}  # callback id -> run id, for those made in this process


def map(fn: Callable[..., Any], items: Iterable[Any], concurrency: int = 8,
        executor: Any = None) -> Any:
    """``[fn(x) for x in items]`` as parallel steps, one journaled position
    each; on replay only the items without a recorded result run. ``executor``
    (a concurrent.futures Executor, or a dask ``distributed.Client``) runs the
    bodies; results are journaled here. Awaitable in async flows."""
    st = fn if isinstance(fn, Step) else Step(fn)
    items = list(items)
    ctx = _CTX.get()
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
    return _maybe_async(ctx, _map_run, ctx, st, items, start, results, todo, concurrency, executor)


def _map_run(ctx: _Ctx, st: Step, items: list[Any], start: int, results: list[Any],
             todo: list[int], concurrency: int, executor: Any) -> list[Any]:
    errors: dict[int, BaseException] = {}
    delay: dict[int, float] = {}  # items whose first attempt failed here: wait first
    is_dask = executor is not None and hasattr(executor, "get_executor")  # a distributed.Client
    if is_dask:
        if st.timeout is None:  # a timeout needs a thread per attempt: the path below
            delay = flow_dask.first_attempts(ctx, st, items, start, todo, concurrency, executor,
                                             results, errors)
            todo = sorted(delay)
        # pure=False: every attempt is a task of its own. With dask's default
        # (pure=True) equal items share one task, so a step runs once for all
        # of them, and a retry is handed the failed attempt's erred future.
        executor = executor.get_executor(pure=False)
        in_step = flow_dask.worker_body()

    def body_for(x: Any) -> Callable[[], Any]:
        if is_dask:  # (a ProcessPoolExecutor could not pickle in_step)
            return lambda: executor.submit(in_step, st.fn, dataclasses.asdict(_STEP.get()), x).result()
        if executor is not None:
            return lambda: executor.submit(st.fn, x).result()
        if st.is_async:
            return lambda: asyncio.run(st.fn(x))
        return lambda: st.fn(x)

    def one(i: int) -> Any:
        if i in delay:
            ctx.run._pause(delay[i])
        return _attempts(ctx, start + i, st, body_for(items[i]))

    with cf.ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="fm-map") as pool:
        run_ctx = contextvars.copy_context
        futures = {pool.submit(run_ctx().run, one, i): i for i in todo}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = ("value", fut.result())
            except Exception as exc:
                errors[i] = exc
    # Each result is durable already (the flow log); checkpointing here also
    # puts the whole fan-out in DuckDB, in a few batched commits, before the
    # flow uses it, so SQL over run_steps agrees with what the flow saw.
    journal().flush()
    out = []
    for i, r in enumerate(results):
        if i in errors:
            raise errors[i]
        if isinstance(r, tuple):
            out.append(r[1])
        else:  # a recorded rec
            out.append(_replay(r)[1])
    return out
