"""Durable flows (spec: "Python API: Flows"): ``@flow``, ``@step``, Run handles,
replay, the registry and resume. Primitives (sleep, callback, map...) are in
flow_ops.py, cron in flow_schedule.py (both re-exported here), persistence in
journal.py, HTTP routes in flow_routes.py; docs/flows.md explains the model.

A run executes its flow function with a context (``_CTX``) that hands out
positions 1, 2, 3... to durable operations in call order. Each operation
first looks at its position in the run's journal: a recorded result is
returned without running anything (replay); otherwise it runs and its
result is journaled before the flow continues.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import (
    Cancelled, FlowError, FlowmetalError, NoSuchFlow, NoSuchRun, NondeterminismError, NotStorable,
    StepError, Timeout,
)
from .journal import Journal

# -- process-wide state -------------------------------------------------------------

_FLOWS: dict[str, "Flow"] = {}
_RUNS: dict[str, "Run"] = {}
_ORPHANS: dict[str, set[str]] = {}  # flow name -> pending run ids waiting for its definition
_CTX: contextvars.ContextVar["_Ctx | None"] = contextvars.ContextVar("fm_flow", default=None)
_STEP: contextvars.ContextVar["StepContext | None"] = contextvars.ContextVar("fm_step", default=None)
_state = {"journal": None, "store": None, "base_url": None, "ready": False}
_lock = threading.RLock()


def configure(store: Any, base_url: str | None = None) -> Journal:
    """Use ``store`` for flows in this process (the kernel does this by
    itself; scripts and benchmarks call it with a Store they opened)."""
    with _lock:
        _state.update(journal=Journal(store), store=store, base_url=base_url)
        return _state["journal"]


def journal() -> Journal:
    with _lock:
        if _state["journal"] is None:
            from .. import runtime

            store = runtime.current().require_store()
            _state.update(journal=Journal(store), store=store)
        return _state["journal"]


def _base_url() -> str:
    if _state["base_url"]:
        return _state["base_url"]
    from .. import runtime

    ep = runtime.current().endpoint
    if ep is None:
        raise FlowError("this kernel has no HTTP endpoint, so callbacks cannot be delivered; "
                        "see the kernel's start-up notice for why")
    return ep.url


# -- the per-run context ---------------------------------------------------------------


@dataclass
class StepContext:
    """Where a step body runs: ``key`` is stable across replays and retries,
    so pass it to an external API as an idempotency key."""

    run_id: str
    position: int
    name: str
    attempt: int

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.position}"


def step_context() -> StepContext | None:
    """The StepContext of the step body running now, or None outside steps."""
    return _STEP.get()


class _Ctx:
    def __init__(self, run: "Run", rows: list[dict[str, Any]], is_async: bool):
        self.run, self.is_async = run, is_async
        self.latest: dict[int, dict[str, Any]] = {}
        self.attempts: dict[int, int] = {}
        self.consumed: set[int] = set()
        for r in rows:
            self._remember(r)
        self.next = 1
        self.lock = threading.Lock()

    def _remember(self, r: dict[str, Any]) -> None:
        p = r["position"]
        self.latest[p] = r
        self.attempts[p] = max(self.attempts.get(p, 0), r.get("attempt") or 0)
        if (r.get("detail") or {}).get("event_seq") is not None:
            self.consumed.add(r["detail"]["event_seq"])

    def take(self, n: int = 1) -> int:
        with self.lock:
            p, self.next = self.next, self.next + n
        return p

    def check(self, p: int, name: str) -> dict[str, Any] | None:
        rec = self.latest.get(p)
        if rec is not None and rec["name"] != name:
            raise NondeterminismError(
                f"run {self.run.id} of flow {self.run.flow_name!r}: position {p} was recorded as "
                f"{rec['name']!r} but the flow now calls {name!r} there; the flow's code changed "
                "since this run was recorded; start a new run, or "
                f"run.fork(from_step={p}) to re-execute from {p} with the current code")
        return rec

    def record(self, p: int, name: str, status: str, attempt: int = 0, started: float | None = None,
               result: str | None = None, error: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        now = time.time()
        row = {"run_id": self.run.id, "position": p, "name": name, "status": status,
               "attempt": attempt, "started_at": started or now, "finished_at": now,
               "duration_ms": (now - started) * 1000 if started else 0.0,
               "result": result, "error": error, "detail": detail}
        journal().append("step", row)
        with self.lock:
            self._remember(row)


def _replay(rec: dict[str, Any] | None) -> tuple[bool, Any]:
    """(True, value) for a recorded result; raises a recorded final error."""
    if rec is None:
        return False, None
    if rec["status"] == "ok":
        return True, journal().decode(rec["result"])
    if rec["status"] == "failed":
        exc, info = journal().decode_error(rec["error"])
        raise exc if exc is not None else StepError(
            f"{info.get('type')}: {info.get('message')} (recorded for step {rec['name']!r} "
            f"at position {rec['position']} of run {rec['run_id']})")
    return False, None


# -- steps -------------------------------------------------------------------------------


class Step:
    """A function whose result is journaled when called inside a flow.
    Outside flows it is the plain function (no journal, no retries)."""

    def __init__(self, fn: Callable[..., Any], retries: int = 0, backoff: float = 2.0,
                 timeout: float | None = None, retry_delay: float = 1.0, name: str | None = None):
        functools.update_wrapper(self, fn)
        self.fn, self.retries, self.backoff, self.timeout = fn, retries, backoff, timeout
        self.retry_delay = retry_delay
        self.name = name or fn.__qualname__
        self.is_async = inspect.iscoroutinefunction(fn)

    def __reduce__(self):  # the namespace snapshot stores the function, not our locks
        return (Step, (self.fn, self.retries, self.backoff, self.timeout, self.retry_delay, self.name))

    def __repr__(self) -> str:
        return f"<fm step {self.name} retries={self.retries} timeout={self.timeout}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = _CTX.get()
        if self.is_async:
            return self._acall(ctx, args, kwargs)
        if ctx is None:
            return self.fn(*args, **kwargs)
        p = ctx.take()
        done, value = _replay(ctx.check(p, self.name))
        return value if done else _attempts(ctx, p, self, lambda: self.fn(*args, **kwargs))

    async def _acall(self, ctx: _Ctx | None, args: tuple, kwargs: dict) -> Any:
        if ctx is None:
            return await self.fn(*args, **kwargs)
        p = ctx.take()
        done, value = _replay(ctx.check(p, self.name))
        if done:
            return value
        # the body runs in this thread's loop; attempts run in a helper thread
        # so that retries' waits and journaling do not block the loop
        loop = asyncio.get_running_loop()

        def body() -> Any:
            return asyncio.run_coroutine_threadsafe(self.fn(*args, **kwargs), loop).result()

        return await asyncio.to_thread(_attempts, ctx, p, self, body)


def step(fn: Callable[..., Any] | None = None, *, retries: int = 0, backoff: float = 2.0,
         timeout: float | None = None, retry_delay: float = 1.0, name: str | None = None) -> Any:
    """``@step`` or ``@step(retries=3, backoff=2.0, timeout=30)``: attempt k+1
    waits ``retry_delay * backoff**(k-1)`` seconds after attempt k failed."""
    if fn is None:
        return lambda f: Step(f, retries, backoff, timeout, retry_delay, name)
    return Step(fn, retries, backoff, timeout, retry_delay, name)


def _attempts(ctx: _Ctx, p: int, st: Step, body: Callable[[], Any]) -> Any:
    """Run ``body`` until it succeeds or its retries are spent, journaling
    every attempt; the result is durable before this returns."""
    attempt = ctx.attempts.get(p, 0)
    while True:
        attempt += 1
        ctx.run._check_cancel()
        sctx = StepContext(ctx.run.id, p, st.name, attempt)
        started = time.time()
        try:
            status, value = "ok", _call(body, sctx, st.timeout)
        except _TimedOut:
            status, value = "timeout", Timeout(
                f"step {st.name!r} (position {p} of run {ctx.run.id}) did not finish within "
                f"{st.timeout}s on attempt {attempt}; it was abandoned (its thread may still run)")
        except Exception as exc:
            status, value = "error", exc
        if _settle(ctx, p, st, attempt, started, status, value):
            return value
        ctx.run._pause(retry_delay(st, attempt))


def _settle(ctx: _Ctx, p: int, st: Step, attempt: int, started: float, status: str,
            value: Any) -> bool:
    """Journal one attempt ("ok", "error" or "timeout"; ``value`` is the
    result or the exception). True: the step succeeded with ``value``;
    False: it is to be retried; raises when it has failed for good."""
    if status == "ok":
        try:
            text = journal().encode(value, f"step {st.name!r} (position {p} of run {ctx.run.id})")
        except NotStorable as exc:
            status, value, attempt = "failed", exc, max(attempt, st.retries + 1)
        else:
            ctx.record(p, st.name, "ok", attempt, started, result=text)
            return True
    final = attempt > st.retries
    ctx.record(p, st.name, "failed" if final else status, attempt, started,
               error=Journal.encode_error(value))
    if final:
        raise value
    return False


def retry_delay(st: Step, attempt: int) -> float:
    """Seconds to wait after failed ``attempt`` of ``st`` before the next."""
    return st.retry_delay * st.backoff ** (attempt - 1)


class _TimedOut(Exception):
    pass


def _call(body: Callable[[], Any], sctx: StepContext, timeout: float | None) -> Any:
    def inside() -> Any:
        _CTX.set(None)  # a step's own calls are plain calls, not journal entries
        _STEP.set(sctx)
        return body()

    run = contextvars.copy_context().run
    if timeout is None:
        return run(inside)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = run(inside)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"fm-step-{sctx.name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise _TimedOut()
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- flows and runs ------------------------------------------------------------------------


class Flow:
    """A durable function: each call is a run with its own journal."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, schedule: str | None = None,
                 register: bool = True):
        functools.update_wrapper(self, fn)
        self.fn, self.name, self.schedule = fn, name or fn.__qualname__, schedule
        self.is_async = inspect.iscoroutinefunction(fn)
        if schedule is not None:
            _validate_schedule(schedule, self.name)
        if register:
            _register(self)

    def __reduce__(self):
        return (_restore_flow, (self.fn, self.name, self.schedule))

    def __repr__(self) -> str:
        sched = f" schedule={self.schedule!r}" if self.schedule else ""
        return f"<fm flow {self.name}{sched}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        parent = _CTX.get()
        if parent is not None:
            # A flow called inside a flow is part of the caller's run: its
            # steps take the caller's next positions.
            return self.fn(*args, **kwargs)
        run = _new_run(self, args, kwargs)
        if self.is_async:
            run._start()
            return run._wait_async()
        run._execute()
        return run.result(0)

    def start(self, *args: Any, **kwargs: Any) -> "Run":
        """Start a run on a background thread and return its handle at once."""
        run = _new_run(self, args, kwargs)
        run._start()
        return run


def _restore_flow(fn: Callable[..., Any], name: str, schedule: str | None) -> Flow:
    # A Flow restored into the namespace registers itself, so pending runs
    # find it by name before on_ready resumes them. One loaded only to be
    # looked at (fm.history().value(...): no live namespace to load into)
    # must not replace the live flow of that name with old code.
    from ..state.pickling import LOAD_GLOBALS

    return Flow(fn, name, schedule, register=LOAD_GLOBALS.get() is not None)


def flow(fn: Callable[..., Any] | None = None, *, schedule: str | None = None,
         name: str | None = None) -> Any:
    """``@flow`` or ``@flow(schedule="*/15 * * * *")`` (croniter syntax; a
    sixth field is seconds)."""
    if fn is None:
        return lambda f: Flow(f, name, schedule)
    return Flow(fn, name, schedule)


def _new_run(fl: Flow, args: tuple, kwargs: dict, forked: tuple[str, int] | None = None) -> "Run":
    j = journal()
    run = Run(uuid.uuid4().hex, fl.name)
    run._flow, run._args, run._kwargs = fl, args, kwargs
    run._args_json = j.encode({"args": list(args), "kwargs": kwargs}, f"the arguments of flow {fl.name!r}")
    run._started_at = time.time()
    run._forked = forked
    with _lock:
        _RUNS[run.id] = run
    run._write("running")
    j.event("run_started", run.id, {"flow": fl.name, "forked_from": forked})
    return run


class Run:
    """A handle on one run; pickles as its id (it survives namespace restore)."""

    def __init__(self, run_id: str, flow_name: str | None = None):
        self.id, self.flow_name = run_id, flow_name
        self._flow: Flow | None = None
        self._args: tuple = ()
        self._kwargs: dict = {}
        self._args_json: str | None = None
        self._started_at = time.time()
        self._forked: tuple[str, int] | None = None
        self._status: str | None = None  # while this process executes it
        self._result: Any = None
        self._error: BaseException | None = None
        self._executing = False
        self._cancelled = False
        self._done = threading.Event()
        self._cv = threading.Condition()
        self._gen = 0  # bumped on every wake-up (signal, callback, cancel)
        self._thread: threading.Thread | None = None

    def __reduce__(self):
        return (_run_handle, (self.id,))

    def __repr__(self) -> str:
        return f"<fm run {self.id} of {self.flow_name}: {self.status}>"

    def __await__(self):
        return self._wait_async().__await__()

    # -- status --

    @property
    def status(self) -> str:
        if self._status is not None:
            return self._status
        row = journal().run_row(self.id)
        if row is None:
            raise NoSuchRun(self.id)
        return row["status"]

    def result(self, timeout: float | None = None) -> Any:
        """The flow's return value; raises its error, or Timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._executing or self._done.is_set():
            if not self._done.wait(timeout):
                raise Timeout(f"run {self.id} of {self.flow_name!r} is still {self._status} after "
                              f"{timeout}s; call result() again or check run.status")
            if self._error is not None:
                raise self._error
            return self._result
        while True:  # a run this process is not executing: read its record
            row = journal().run_row(self.id)
            if row is None:
                raise NoSuchRun(self.id)
            if row["status"] == "succeeded":
                return journal().decode(row["result"])
            if row["status"] in ("failed", "cancelled"):
                exc, info = journal().decode_error(row["error"])
                raise exc if exc is not None else StepError(f"run {self.id}: {info.get('message')}")
            if self._executing:
                return self.result(None if deadline is None else max(0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"run {self.id} is still {row['status']} after {timeout}s")
            time.sleep(0.1)

    async def _wait_async(self) -> Any:
        await asyncio.get_running_loop().run_in_executor(None, self._done.wait)
        return self.result(0)

    # -- control --

    def signal(self, name: str, data: Any = None) -> None:
        """Deliver a named signal (kept until a ``wait_for(name)`` takes it)."""
        deliver_signal(self.id, name, data)

    def cancel(self) -> None:
        """Stop at the next durable operation; a running step body finishes."""
        if self._done.is_set():
            return
        self._cancelled = True
        self._status = self._status and "cancelled"
        self._write("cancelled", error=Journal.encode_error(Cancelled(f"run {self.id} was cancelled")))
        journal().event("run_cancelled", self.id, {})
        self._wake()

    def fork(self, from_step: int) -> "Run":
        """A new run of the current code: positions < from_step are copied
        from this run's journal, the rest execute."""
        row = journal().run_row(self.id)
        if row is None:
            raise NoSuchRun(self.id)
        fl = _FLOWS.get(row["flow"])
        if fl is None:
            raise NoSuchFlow(row["flow"], _FLOWS)
        a = journal().decode(row["args"]) or {"args": [], "kwargs": {}}
        new = _new_run(fl, tuple(a["args"]), a["kwargs"], forked=(self.id, from_step))
        latest: dict[int, dict[str, Any]] = {}
        for r in journal().step_rows(self.id):
            if r["position"] < from_step:
                latest[r["position"]] = r
        for p in sorted(latest):
            journal().append("step", {**latest[p], "run_id": new.id})
        new._start()
        return new

    # -- execution --

    def _write(self, status: str, result: str | None = None, error: str | None = None) -> None:
        done = status in ("succeeded", "failed", "cancelled")
        journal().append("run", {
            "run_id": self.id, "flow": self.flow_name, "status": status, "args": self._args_json,
            "result": result, "error": error, "started_at": self._started_at,
            "finished_at": time.time() if done else None,
            "forked_from_run": self._forked[0] if self._forked else None,
            "forked_from_step": self._forked[1] if self._forked else None})

    def _set_status(self, status: str) -> None:
        if self._status != status and not self._cancelled:
            self._status = status
            self._write(status)

    def _start(self) -> None:
        self._executing = True
        run = contextvars.copy_context().run  # output goes to the cell that started it
        self._thread = threading.Thread(target=run, args=(self._execute,), daemon=True,
                                        name=f"fm-run-{self.id[:8]}")
        self._thread.start()

    def _execute(self) -> None:
        assert self._flow is not None
        self._executing = True
        self._status = "running"
        j = journal()
        rows = j.step_rows(self.id) if self._forked or self._resumed else []
        ctx = _Ctx(self, rows, self._flow.is_async)
        token = _CTX.set(ctx)
        try:
            if self._flow.is_async:
                value = asyncio.run(self._flow.fn(*self._args, **self._kwargs))
            else:
                value = self._flow.fn(*self._args, **self._kwargs)
            text = j.encode(value, f"flow {self.flow_name!r} (run {self.id})")
            self._result = value
            self._status = "succeeded"
            self._write("succeeded", result=text)
            j.event("run_finished", self.id, {})
        except BaseException as exc:
            self._error = exc
            if not self._cancelled:
                self._status = "failed"
                self._write("failed", error=Journal.encode_error(exc))
                j.event("run_failed", self.id, {"error": f"{type(exc).__name__}: {exc}"})
            else:
                self._status = "cancelled"
            if not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread():
                raise
        finally:
            _CTX.reset(token)
            try:
                j.flush()  # the SQL views show the finished run at once
            finally:
                self._executing = False
                self._done.set()

    _resumed = False

    def _check_cancel(self) -> None:
        if self._cancelled:
            raise Cancelled(f"run {self.id} of {self.flow_name!r} was cancelled")

    def _wake(self) -> None:
        with self._cv:
            self._gen += 1
            self._cv.notify_all()

    def _pause(self, seconds: float) -> None:
        """Sleep, waking early only to honour cancel()."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._check_cancel()
            with self._cv:
                self._cv.wait(min(left, 1.0))
        self._check_cancel()


def _run_handle(run_id: str) -> Run:
    with _lock:
        run = _RUNS.get(run_id)
        if run is None:
            run = _RUNS[run_id] = Run(run_id)
            # a handle on a recorded run carries what was recorded, so a
            # status it writes (cancel) does not blank its arguments or start
            row = journal().run_row(run_id)
            if row is not None:
                run.flow_name = row["flow"]
                run._args_json = row["args"]
                run._started_at = row["started_at"] or run._started_at
                if row["forked_from_run"]:
                    run._forked = (row["forked_from_run"], row["forked_from_step"])
        return run


def get_run(run_id: str) -> Run:
    """The handle of a run of this history, by id."""
    run = _RUNS.get(run_id)
    if run is not None:
        return run
    row = journal().run_row(run_id)
    if row is None:
        raise NoSuchRun(run_id)
    run = _run_handle(run_id)
    run.flow_name = row["flow"]
    return run


def runs(limit: int | None = None):
    """The runs of this history, newest first, as a DataFrame."""
    return journal().runs(limit).to_pandas()


# -- registry and resume ------------------------------------------------------------------


def _register(fl: Flow) -> None:
    with _lock:
        _FLOWS[fl.name] = fl
        waiting = _ORPHANS.pop(fl.name, set()) if _state["ready"] else set()
    for run_id in sorted(waiting):
        _resume(fl, run_id)
    if fl.schedule is not None and _state["ready"]:
        _SCHEDULER.add(fl)


def _resume(fl: Flow, run_id: str) -> bool:
    row = journal().run_row(run_id)
    if row is None or row["status"] not in ("running", "sleeping", "waiting"):
        return False
    with _lock:
        run = _run_handle(run_id)
        if run._executing:
            return False
        a = journal().decode(row["args"]) or {"args": [], "kwargs": {}}
        run.flow_name, run._flow = fl.name, fl
        run._args, run._kwargs, run._args_json = tuple(a["args"]), a["kwargs"], row["args"]
        run._started_at = row["started_at"] or time.time()
        if row["forked_from_run"]:
            run._forked = (row["forked_from_run"], row["forked_from_step"])
        run._resumed = True
        run._start()
    journal().event("run_resumed", run_id, {"flow": fl.name})
    return True


def resume_pending(rt: Any = None) -> list[str]:
    """Resume every pending run whose flow is defined; the others resume
    when their flow is defined (a restored namespace, or the cell re-run).
    The kernel calls this once it has restored the namespace (on_ready)."""
    j = journal()
    resumed, waiting = [], []
    with _lock:
        _state["ready"] = True
    for row in j.pending_runs():
        fl = _FLOWS.get(row["flow"])
        if fl is None:
            with _lock:
                _ORPHANS.setdefault(row["flow"], set()).add(row["run_id"])
            waiting.append(f"{row['flow']}/{row['run_id'][:8]}")
        elif _resume(fl, row["run_id"]):
            resumed.append(f"{row['flow']}/{row['run_id'][:8]}")
    for fl in list(_FLOWS.values()):
        if fl.schedule is not None:
            _SCHEDULER.add(fl)
    if rt is not None and (resumed or waiting):
        line = f"flowmetal: resumed {len(resumed)} flow run(s)"
        line += f" ({', '.join(resumed)})" if resumed else ""
        if waiting:
            line += f"; {len(waiting)} wait for their flow to be defined ({', '.join(waiting)})"
        rt.notices.append(line)
    return resumed


def on_ready(rt: Any) -> None:
    """The kernel's start-up hook (runtime.on_ready)."""
    resume_pending(rt)


def flush() -> None:
    """Move journal records still in the log into the history (before an export)."""
    j = _state["journal"]
    if j is not None:
        j.flush()


def shutdown() -> None:
    """A clean end: the log's records into the history, the log closed."""
    with _lock:
        j, _state["journal"] = _state["journal"], None
    if j is not None:
        j.close()


# -- primitives and schedules ---------------------------------------------------------------
# flow_ops.py and flow_schedule.py import this module's names, so they are
# imported last, once those exist; their names stay reachable from here too.

from . import ops as _ops
from . import schedule as _sched  # noqa: E402

now, random, uuid4, sleep, map = _ops.now, _ops.random, _ops.uuid4, _ops.sleep, _ops.map
Callback, callback, wait_for = _ops.Callback, _ops.callback, _ops.wait_for
deliver_signal, deliver_callback, _CALLBACKS = _ops.deliver_signal, _ops.deliver_callback, _ops._CALLBACKS
_value, _maybe_async, _sleep, _map_run = _ops._value, _ops._maybe_async, _ops._sleep, _ops._map_run
_wait, _wait_blocking = _ops._wait, _ops._wait_blocking
_validate_schedule, _Scheduler, _SCHEDULER = _sched._validate_schedule, _sched._Scheduler, _sched._SCHEDULER
