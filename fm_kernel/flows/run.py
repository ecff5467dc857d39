"""Run handles (spec: "Python API: Flows"): a run's record, its execution
on a worker (a waiting run parks, holding no thread: parking.py), result,
cancel, its deadline, fork, signals and the events it publishes
(get_event; messages.py has the rest). Flows (runs.py) make runs
through ``new_run``; the primitives (ops.py) drive a run through its small
API: set_status, pause, wake/wakes/wait_wake, check_cancel."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import threading
import time
import uuid
from typing import Any

from ..errors import Cancelled, NoSuchFlow, NoSuchRun, NotStorable, StepError, Timeout
from .context import CURRENT_RUN, RunContext, registry, replay
from .parking import Wakeable, blocking, can_park, park, settle_branches
from . import run_events
from .run_events import deliver_signal
from .journal import ENQUEUED, FINISHED_STATUSES, Journal

# A run's flow is a runs.Flow (not imported: runs.py sits above this module);
# what a run uses of it is .fn, .name and .is_async.
FlowLike = Any


def new_run(fl: FlowLike, args: tuple, kwargs: dict, forked: tuple[str, int] | None = None,
            run_id: str | None = None, parent: tuple[str, int] | None = None,
            timeout: float | None = None, queue: tuple[str, int | None] | None = None) -> "Run":
    """A new run of ``fl``, recorded as running (not started yet); its
    deadline, from ``timeout`` or else the flow's own, is in that record.
    ``queue`` (name, priority): recorded ``enqueued``, for queues.py to start."""
    reg = registry()
    j = reg.journal
    run = Run(run_id or uuid.uuid4().hex, fl.name)
    run._flow, run._args, run._kwargs = fl, args, kwargs
    run._args_json = _encode_args(fl, args, kwargs)
    run._forked, run._parent = forked, parent
    limit = timeout if timeout is not None else getattr(fl, "timeout", None)
    run._deadline = run._started_at + limit if limit is not None else None
    if queue is not None:
        run.queue, run.priority = queue
        run.enqueued_at, run.in_queue = run._started_at, True
    with reg.lock:
        reg.runs[run.id] = run
    run._write("running" if queue is None else ENQUEUED)
    j.event("run_started" if queue is None else "run_enqueued", run.id,
            {"flow": fl.name, "forked_from": forked, "parent": parent})
    return run


def _encode_args(fl: FlowLike, args: tuple, kwargs: dict) -> str:
    j = registry().journal
    try:
        return j.encode({"args": list(args), "kwargs": kwargs}, f"the arguments of flow {fl.name!r}")
    except NotStorable:  # name the argument, not the dict we wrap them in
        named = [(str(i + 1), v) for i, v in enumerate(args)] + list(kwargs.items())
        for label, v in named:
            j.encode(v, f"argument {label} of flow {fl.name!r}", fix="pass plain data (dict, "
                     "list, str, numbers) or an object cloudpickle can serialise")
        raise


class Run(Wakeable):
    """A handle on one run; pickles as its id (it survives namespace restore)."""

    def __init__(self, run_id: str, flow_name: str | None = None):
        self.id, self.flow_name = run_id, flow_name
        self._flow: "FlowLike | None" = None
        self._args: tuple = ()
        self._kwargs: dict = {}
        self._args_json: str | None = None
        self._started_at = time.time()
        self._forked: tuple[str, int] | None = None
        self._parent: tuple[str, int] | None = None  # (run id, position) that started it
        self._deadline: float | None = None  # epoch seconds; recorded when the run started
        self._stop_error: BaseException | None = None  # why cancel() or the deadline stopped it
        self._resumed = False
        self._status: str | None = None  # while this process executes it
        self._result: Any = None
        self._error: BaseException | None = None
        self._executing = False
        self._cancelled = False
        self._body_ended = False  # an async body returned or raised: its threads stop
        self._finished = False  # its final status is written (here, or as recorded)
        self._end = threading.Lock()  # cancel() against the final write
        self._done = threading.Event()
        self._cv = threading.Condition()
        self._init_waking()
        self._context: contextvars.Context | None = None  # the starter's (output to its cell)
        self._kept_rows: list[dict[str, Any]] | None = None  # its journal, while parked
        self._deadline_watched = False
        self._on_done: list[Any] = []  # add_done_callback
        # fm.Queue (queues.py): its queue, when enqueued (epoch s), its priority;
        # in_queue until the queue starts it (started_at is NULL until then).
        self.queue, self.enqueued_at, self.priority, self.in_queue = None, None, None, False

    @classmethod
    def from_row(cls, row: dict[str, Any], fl: "FlowLike | None" = None) -> "Run":
        """A handle carrying what was recorded for a run, so a status it
        writes (cancel) does not blank its arguments or start; with ``fl``,
        ready to execute (resume)."""
        run = cls(row["run_id"], row["flow"])
        run._load(row, fl)
        return run

    def _load(self, row: dict[str, Any], fl: "FlowLike | None") -> None:
        self.flow_name, self._args_json = row["flow"], row["args"]
        self._started_at = row["started_at"] or self._started_at
        if row["forked_from_run"]:
            self._forked = (row["forked_from_run"], row["forked_from_step"])
        if row.get("parent_run"):
            self._parent = (row["parent_run"], row["parent_position"])
        self._deadline = row.get("deadline")
        self.queue, self.enqueued_at = row.get("queue"), row.get("enqueued_at")
        self.priority, self.in_queue = row.get("priority"), row["status"] == ENQUEUED
        if fl is not None:
            a = registry().journal.decode(row["args"]) or {"args": [], "kwargs": {}}
            self._flow, self._args, self._kwargs = fl, tuple(a["args"]), a["kwargs"]

    def __reduce__(self):
        return (run_handle, (self.id,))

    def __repr__(self) -> str:
        return f"<fm run {self.id} of {self.flow_name}: {self.status}>"

    def __await__(self):
        return self.wait_async().__await__()

    # -- status --

    @property
    def status(self) -> str:
        if self._status is not None:
            return self._status
        row = registry().journal.run_row(self.id)
        if row is None:
            raise NoSuchRun(self.id)
        return row["status"]

    def result(self, timeout: float | None = None) -> Any:
        """The flow's return value; raises its error, or Timeout. In a flow body
        it parks the caller (with a timeout: run_events.result_within)."""
        ctx = CURRENT_RUN.get()
        if timeout is not None and ctx is not None and ctx.run is not self:
            return run_events.result_within(self, ctx, timeout)
        if timeout is None and not self._done.is_set():
            self._park_caller(ctx)
        return self.outcome(timeout)

    def outcome(self, timeout: float | None) -> Any:
        """result() without parking: waits on this thread (up to ``timeout``)."""
        if self._executing or self._done.is_set():
            if not self._done.wait(timeout):
                raise Timeout(f"run {self.id} of {self.flow_name!r} is still {self._status} after "
                              f"{timeout}s; call result() again or check run.status")
            if self._error is not None:
                raise self._error
            return self._result
        return self._recorded_result(timeout)

    def _recorded_result(self, timeout: float | None) -> Any:
        """result() of a run this process is not executing: read its record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        j = registry().journal
        while True:
            row = j.run_row(self.id)
            if row is None:
                raise NoSuchRun(self.id)
            if row["status"] == "succeeded":
                return j.decode(row["result"])
            if row["status"] in ("failed", "cancelled"):
                exc, info = j.decode_error(row["error"])
                raise exc if exc is not None else StepError(f"run {self.id}: {info.get('message')}")
            if self._executing:
                return self.outcome(None if deadline is None else max(0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"run {self.id} is still {row['status']} after {timeout}s")
            time.sleep(0.1)

    def _park_caller(self, ctx: RunContext | None) -> None:
        """A flow waiting for this run's result parks until this run ends (its end wakes watchers)."""
        if ctx is None or ctx.run is self or not can_park(ctx):
            return
        since = ctx.run.wakes
        self.watch_by(ctx.run)
        if not run_events.has_ended(self):
            park(ctx, None, since, f"the result of run {self.id}")

    async def wait_async(self) -> Any:
        if CURRENT_RUN.get() is not None:  # ``await child`` in a flow: parks as result() does
            return await asyncio.to_thread(self.result)
        await asyncio.get_running_loop().run_in_executor(None, self._done.wait)
        return self.outcome(0)

    # -- control --

    def signal(self, name: str, data: Any = None) -> None:
        """Deliver a named signal (kept until a ``wait_for(name)`` takes it).
        Raises RunFinished if the run has finished. Inside a flow the sending
        is journaled: a replay does not send it again."""
        ctx = CURRENT_RUN.get()
        if ctx is None:
            deliver_signal(self.id, name, data)
            return
        p = ctx.take()
        opname = f"fm.signal({name})"
        done, _ = replay(ctx.check(p, opname))
        if done:
            return
        # The key makes the store itself refuse a second copy, should the
        # kill come after the signal was stored but before this position was.
        seq = deliver_signal(self.id, name, data, key=f"{ctx.run.id}:{p}")
        ctx.record(p, opname, "ok", 1,
                   result=registry().journal.encode({"run_id": self.id, "seq": seq}, opname))

    def get_event(self, key: str, timeout: float | None = None) -> Any:
        """The latest value this run published for ``key`` (fm.set_event),
        waiting up to ``timeout`` seconds for the first (None: no limit).
        Raises Timeout if none was set by then; at once if the run finished
        without setting it, since it never will. Inside a flow it is
        journaled: the deadline first, then the answer replay returns.
        Awaitable in async flows."""
        return run_events.get_event(self, key, timeout)

    def cancel(self) -> bool:
        """Stop at the next durable operation; a running step body finishes,
        and the run ends ``cancelled`` even if that was its last step. True
        if this call cancelled it; False, changing nothing, if it had
        finished (or been cancelled) already."""
        return self._stop(Cancelled(f"run {self.id} was cancelled"), "run_cancelled", {})

    @property
    def deadline(self) -> float | None:
        """When the run times out (epoch seconds), or None: recorded at its start."""
        return self._deadline

    def expire(self, parent: "Run | None" = None) -> bool:
        """End the run ``cancelled`` with ``Timeout``: its deadline passed
        (``parent`` None), or the run that started it timed out. Its
        unfinished child runs end the same way (the documented policy: a
        run's timeout bounds the work it started). False if it had finished."""
        what = f"run {self.id} of flow {self.flow_name!r}"
        if parent is not None:
            err = Timeout(f"{what} was cancelled: its parent run {parent.id} of flow "
                          f"{parent.flow_name!r} timed out")
        else:
            assert self._deadline is not None
            at = dt.datetime.fromtimestamp(self._deadline, dt.timezone.utc).isoformat(timespec="seconds")
            err = Timeout(f"{what} timed out and was cancelled: its deadline was {at}, "
                          f"{self._deadline - self._started_at:g}s after it started (the timeout "
                          "given to @fm.flow or flow.start)")
        payload = {"parent": parent.id} if parent is not None else {"deadline": self._deadline}
        if not self._stop(err, "run_timed_out", payload):
            return False
        for row in registry().journal.pending_children(self.id):
            run_handle(row["run_id"]).expire(parent=self)
        return True

    def _stop(self, error: BaseException, event: str, payload: dict[str, Any]) -> bool:
        """Record the run ``cancelled`` with ``error`` and wake it, so that
        its next durable operation (or the wait it is in) raises."""
        with self._end:
            if self._finished or self._cancelled or self._done.is_set():
                return False
            if not self._executing:  # a handle on a recorded run: ask the record
                row = registry().journal.run_row(self.id)
                if row is None:
                    raise NoSuchRun(self.id)
                if row["status"] in FINISHED_STATUSES:
                    self._finished = True
                    return False
            self._cancelled, self._stop_error = True, error
            self._status = self._status and "cancelled"
            self._write("cancelled", error=Journal.encode_error(error))
        registry().journal.event(event, self.id, payload)
        self.wake()
        return True

    def fork(self, from_step: int) -> "Run":
        """A new run of the current code: positions < from_step are copied
        from this run's journal, the rest execute."""
        reg = registry()
        j = reg.journal
        row = j.run_row(self.id)
        if row is None:
            raise NoSuchRun(self.id)
        fl = reg.flows.get(row["flow"])
        if fl is None:
            raise NoSuchFlow(row["flow"], reg.flows)
        a = j.decode(row["args"]) or {"args": [], "kwargs": {}}
        new = new_run(fl, tuple(a["args"]), a["kwargs"], forked=(self.id, from_step))
        latest: dict[int, dict[str, Any]] = {}
        for r in j.step_rows(self.id):
            if r["position"] < from_step:
                latest[r["position"]] = r
        for p in sorted(latest):
            j.append("step", {**latest[p], "run_id": new.id})
        new.start_thread()
        return new

    # -- for the primitives (ops.py) --

    def set_status(self, status: str) -> None:
        """Record ``status`` ("sleeping", "waiting", "running") unless cancelled."""
        if self._status != status and not self._cancelled:
            self._status = status
            self._write(status)

    def check_cancel(self) -> None:
        if self._cancelled:
            if isinstance(self._stop_error, Timeout):
                raise Timeout(str(self._stop_error))
            raise Cancelled(f"run {self.id} of {self.flow_name!r} was cancelled")
        if self._body_ended:  # nobody awaits this operation any more (_async_body)
            raise Cancelled(f"run {self.id} of {self.flow_name!r}: its flow body has ended")

    @property
    def started_at(self) -> float:
        """When the run was first started (epoch seconds), kept across resumes."""
        return self._started_at

    # -- execution --

    def _write(self, status: str, result: str | None = None, error: str | None = None) -> None:
        done = status in FINISHED_STATUSES
        registry().journal.append("run", {
            "run_id": self.id, "flow": self.flow_name, "status": status, "args": self._args_json,
            "result": result, "error": error, "started_at": None if self.in_queue else self._started_at,
            "finished_at": time.time() if done else None,
            "forked_from_run": self._forked[0] if self._forked else None,
            "forked_from_step": self._forked[1] if self._forked else None,
            "parent_run": self._parent[0] if self._parent else None,
            "parent_position": self._parent[1] if self._parent else None,
            "deadline": self._deadline, "queue": self.queue, "enqueued_at": self.enqueued_at,
            "priority": self.priority})

    def add_done_callback(self, fn: Any) -> None:
        """Call ``fn(run)`` when this process ends executing the run (a
        queue frees its slot then); at once if it has already."""
        with self._cv:
            if not self._done.is_set():
                self._on_done.append(fn)
                return
        fn(self)

    @property
    def executing(self) -> bool:
        return self._executing

    @property
    def finished(self) -> bool:
        """True once this process has written or read a final status."""
        return self._finished or self._done.is_set()

    def start_thread(self) -> None:
        """Execute on a worker (parking.py), in a copy of the caller's
        context (output goes to the cell that started it); a wait parks it."""
        self._executing = True
        self._context = contextvars.copy_context()
        self._resubmit()

    def _resubmit(self) -> None:
        ctx = self._context if self._context is not None else contextvars.copy_context()
        # A copy per segment: the one before may still be leaving its context.
        registry().parking.workers.submit(lambda: ctx.copy().run(self.execute, True))

    def execute(self, parkable: bool = False) -> None:
        """Run the flow function on this thread, journaling it: to its end,
        or (``parkable``: on a worker, not a direct call) to a wait it parks
        at (parking.py); a parked run executes again from the top when
        woken, replaying what it had journaled."""
        assert self._flow is not None
        self._executing = True
        j = registry().journal
        if self._kept_rows is not None:  # woken from a park: replay what this process holds
            rows, self._kept_rows = self._kept_rows, None
        else:
            self._status = "running"
            rows = j.step_rows(self.id) if self._forked or self._resumed else []
        if self._deadline is not None and not self._deadline_watched:
            self._deadline_watched = True
            registry().deadlines.watch(self)
        ctx = RunContext(self, rows, self._flow.is_async)
        if parkable:
            ctx.park_thread, ctx.park_async = threading.get_ident(), self._flow.is_async
        token = CURRENT_RUN.set(ctx)
        try:
            if self._flow.is_async:
                with blocking():  # its loop holds this worker until it ends or parks
                    value = asyncio.run(self._async_body())
            else:
                value = self._flow.fn(*self._args, **self._kwargs)
            if ctx.parking is None:
                text = j.encode(value, f"the result of flow {self.flow_name!r} (run {self.id})")
                self._succeeded(value, text)
        except BaseException as exc:
            if ctx.failure is not None:  # not worth parking for: replay would end the same
                exc, ctx.parking = ctx.failure, None
            # A Park, or whatever a finally raised while one unwound: parked.
            if ctx.parking is None:
                self._failed(exc)
                if not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread():
                    raise
        finally:
            CURRENT_RUN.reset(token)
            if ctx.parking is not None:
                self._kept_rows = list(ctx.latest.values())
                self.park_segment(ctx.parking, registry().parking.timers)
            elif parkable:  # its final record is durable in the flow log, and every
                self._ended()  # read flushes that log first: no DuckDB commit per run
            else:
                try:
                    j.flush()  # the SQL views show the finished run at once
                finally:
                    self._ended()

    def _ended(self) -> None:
        self._executing = False
        with self._cv:
            self._done.set()
            on_done, self._on_done = self._on_done, []
        for fn in on_done:  # a queue frees the run's slot (queues.py)
            fn(self)
        self.wake()  # runs parked on this one's result look again

    async def _async_body(self) -> Any:
        self._body_ended = False
        try:
            return await self._flow.fn(*self._args, **self._kwargs)
        finally:
            # A sleep or wait gathered beside a step that raised (a changed
            # step name on replay, say) still blocks a thread, and asyncio.run
            # joins those threads before returning: wake them to give up, or
            # the run would hang until that sleep or wait ended (perhaps never).
            # A body that parks lets its other branches settle first (parking.py).
            await settle_branches(CURRENT_RUN.get())
            self._body_ended = True
            with self._cv:  # not wake(): that would count as a delivery and unpark a park
                self._cv.notify_all()

    def _succeeded(self, value: Any, text: str) -> None:
        with self._end:
            if not self._cancelled:  # else cancel() wrote the final status while the body ran
                self._result, self._status, self._finished = value, "succeeded", True
                self._write("succeeded", result=text)
        if not self._cancelled:
            registry().journal.event("run_finished", self.id, {})
            return
        self._status = "cancelled"
        if isinstance(self._stop_error, Timeout):
            self._error = Timeout(f"{self._stop_error}, during its last step; the step's result "
                                  "is journaled, the run's is not")
            return
        self._error = Cancelled(f"run {self.id} of {self.flow_name!r} was cancelled during its "
                                "last step; the step's result is journaled, the run's is not")

    def _failed(self, exc: BaseException) -> None:
        self._error = exc
        with self._end:
            self._finished = True
            if self._cancelled:
                self._status = "cancelled"
                return
            self._status = "failed"
            self._write("failed", error=Journal.encode_error(exc))
        registry().journal.event("run_failed", self.id, {"error": f"{type(exc).__name__}: {exc}"})


def run_handle(run_id: str) -> Run:
    """The one Run handle of this process for ``run_id`` (made from its record)."""
    reg = registry()
    with reg.lock:
        run = reg.runs.get(run_id)
        if run is None:
            row = reg.journal.run_row(run_id)
            run = Run.from_row(row) if row is not None else Run(run_id)
            reg.runs[run_id] = run
        return run


def get_run(run_id: str) -> Run:
    """The handle of a run of this history, by id."""
    reg = registry()
    run = reg.runs.get(run_id)
    if run is not None:
        return run
    if reg.journal.run_row(run_id) is None:
        raise NoSuchRun(run_id)
    return run_handle(run_id)


def runs(limit: int | None = None):
    """The runs of this history, newest first, as a DataFrame."""
    return registry().journal.runs(limit).to_pandas()
