"""Flows (spec: "Python API: Flows"): ``@flow``, starting runs (a child
run once, when a flow body starts one), and the registration that resumes
pending runs when their flow is defined or a kernel opens the history."""

from __future__ import annotations

import functools
import inspect
import uuid
from typing import Any, Callable

from ..errors import UsageError
from ..record import trust
from .context import CURRENT_RUN, RunContext, registry, replay
from .deadlines import validate_timeout
from .journal import PENDING_STATUSES
from .queues import Queue, enqueue_once
from .run import Run, new_run, run_handle
from .run_ids import once_per_id
from .schedule import slot_queue_name, validate_overlap, validate_schedule


class Flow:
    """A durable function: each call is a run with its own journal."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, schedule: str | None = None,
                 register: bool = True, on: Any = None, overlap: str = "skip",
                 timeout: float | None = None):
        functools.update_wrapper(self, fn)
        self.fn, self.name, self.schedule = fn, name or fn.__qualname__, schedule
        self.overlap = validate_overlap(overlap, self.name)
        self.timeout = validate_timeout(timeout, self.name)  # seconds a run may take, or None
        self.on = on  # an event name (events.py) or a source (sources.py): a run per event
        self.is_async = inspect.iscoroutinefunction(fn)
        if schedule is not None:
            validate_schedule(schedule, self.name)
        if register:
            _register(self)

    def __reduce__(self):
        return (restore_flow, (self.fn, self.name, self.schedule, self.on, self.overlap,
                               self.timeout))

    def busy(self) -> bool:
        """Whether a run of this flow is going in this process (overlap="skip")."""
        return any(r.flow_name == self.name and not r.finished for r in list(registry().runs.values()))

    def __repr__(self) -> str:
        sched = f" schedule={self.schedule!r}" if self.schedule else ""
        on = f" on={self.on!r}" if self.on is not None else ""
        limit = f" timeout={self.timeout:g}" if self.timeout is not None else ""
        return f"<fm flow {self.name}{sched}{on}{limit}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if CURRENT_RUN.get() is not None:
            # A flow called inside a flow is part of the caller's run: its
            # steps take the caller's next positions.
            return self.fn(*args, **kwargs)
        run = new_run(self, args, kwargs)
        if self.is_async:
            run.start_thread()
            return run.wait_async()
        run.execute()
        return run.result(0)

    def start(self, *args: Any, run_id: str | None = None, timeout: float | None = None,
              queue: Any = None, **kwargs: Any) -> "Run":
        """Start a run on a background thread and return its handle at once.
        With ``run_id``, once: a second start with that id returns the run
        it started (an idempotency key). ``timeout``: seconds the run may
        take, instead of the flow's own (so no flow argument can be named
        run_id or timeout here). Inside a flow the new run is a child of the
        running one, started once: replay returns the recorded child instead.
        ``queue`` (an fm.Queue or its name): enqueue the run there instead,
        as ``queue.enqueue(flow, ...)`` does."""
        if queue is not None:
            return enqueue_once(queue, self, args, kwargs, run_id=run_id, timeout=timeout)[0]
        timeout = validate_timeout(timeout, self.name, f"{self.name}.start")
        ctx = CURRENT_RUN.get()
        if ctx is not None:
            if run_id is not None:
                raise UsageError(f"{self.name}.start(run_id=...) inside a flow: a child run's "
                                 "id is chosen by its position already; leave run_id out")
            return _start_child(ctx, self, args, kwargs, timeout)
        if run_id is not None:
            return start_once(self, run_id, args, kwargs, timeout)[0]
        run = new_run(self, args, kwargs, timeout=timeout)
        run.start_thread()
        return run


def start_once(fl: Flow, run_id: str, args: tuple, kwargs: dict,
               timeout: float | None = None) -> tuple["Run", bool]:
    """(the run with this id, True if this call started it): a run id seen
    before returns that run and starts nothing."""
    run, made = once_per_id(fl.name, run_id,
                            lambda: new_run(fl, args, kwargs, run_id=run_id, timeout=timeout))
    if made:
        run.start_thread()
    return run, made


def _start_child(ctx: RunContext, fl: Flow, args: tuple, kwargs: dict,
                 timeout: float | None) -> "Run":
    p = ctx.take()
    opname = f"fm.start({fl.name})"
    done, stored = replay(ctx.check(p, opname))
    if done:
        return run_handle(stored["run_id"])  # it resumes by itself if still pending
    # The child's id is a function of (parent, position), so a kill between
    # starting it and journaling this position finds it on replay rather
    # than starting a second child.
    child_id = uuid.uuid5(uuid.NAMESPACE_URL, f"fm-child:{ctx.run.id}:{p}").hex
    reg = registry()
    # Only a run resumed from the record can have started this child in an
    # earlier process; for any other the handles in memory are all there is
    # (asking DuckDB would commit the flow log's batch once per child).
    if child_id in reg.runs or (ctx.run._resumed and reg.journal.run_row(child_id) is not None):
        child = run_handle(child_id)
    else:
        child = new_run(fl, args, kwargs, run_id=child_id, parent=(ctx.run.id, p), timeout=timeout)
        child.start_thread()
    ctx.record(p, opname, "ok", 1, result=reg.journal.encode({"run_id": child_id}, opname))
    return child


def restore_flow(fn: Callable[..., Any], name: str, schedule: str | None, on: Any = None,
                 overlap: str = "skip", timeout: float | None = None) -> Flow:
    # A Flow restored into the namespace registers itself, so pending runs
    # find it by name before on_ready resumes them. One loaded only to be
    # looked at (fm.history().value(...): no live namespace to load into)
    # must not replace the live flow of that name with old code.
    from ..state.pickling import LOAD_GLOBALS

    return Flow(fn, name, schedule, register=LOAD_GLOBALS.get() is not None, on=on,
                overlap=overlap, timeout=timeout)


def flow(fn: Callable[..., Any] | None = None, *, schedule: str | None = None,
         name: str | None = None, on: Any = None, overlap: str = "skip",
         timeout: float | None = None) -> Any:
    """``@flow`` or ``@flow(schedule="*/15 * * * *")`` (cron; six fields put
    the seconds first; ``overlap="skip"|"queue"|"allow"`` for a slot that
    comes while the previous run is going: schedule.py). ``on="name"``: a
    run per named event (its payload the one argument; events.py), once per
    delivery id.
    ``timeout``: seconds each run may take (deadlines.py)."""
    if on is not None and not isinstance(on, str) and not hasattr(on, "attach"):
        raise UsageError(f"@fm.flow(on={on!r}): expected an event name, fm.files(...) or fm.poll(...)")
    if fn is None:
        return lambda f: Flow(f, name, schedule, on=on, overlap=overlap, timeout=timeout)
    return Flow(fn, name, schedule, on=on, overlap=overlap, timeout=timeout)


# -- registration and resume ------------------------------------------------------------


def _register(fl: Flow) -> None:
    reg = registry()
    with reg.lock:
        reg.flows[fl.name] = fl
        waiting = reg.orphans.pop(fl.name, set()) if reg.ready else set()
    for run_id in sorted(waiting):
        _resume(fl, run_id)
    if reg.ready:
        _schedule(fl)
        _watch(fl)


def _schedule(fl: Flow) -> None:
    """Start the flow's schedule, if it has one. With overlap="queue" its
    queue of one comes first: a slot left waiting there by a killed kernel
    is a run record that queue's dispatcher takes up (schedule.py)."""
    if fl.schedule is None:
        return
    reg = registry()
    if fl.overlap == "queue":
        name = slot_queue_name(fl.name)
        live = reg.queues.get(name)
        if live is None or live.limit != 1:  # the cell re-run keeps the live one
            Queue(name, concurrency=1)
    reg.scheduler.add(fl)


def _watch(fl: Flow) -> None:
    """Start the flow's event source (fm.files, fm.poll: sources.py, above
    this module, so reached by its method), stopping the one it replaces."""
    on = getattr(fl, "on", None)
    source = on if hasattr(on, "attach") else None
    registry().set_source(fl.name, source)
    if source is not None:
        source.attach(fl)


def _resume(fl: Flow, run_id: str) -> bool:
    reg = registry()
    row = reg.journal.run_row(run_id)
    if row is None or row["status"] not in PENDING_STATUSES:
        return False
    with reg.lock:
        run = run_handle(run_id)
        if run.executing:
            return False
        run._load(row, fl)
        run._resumed = True
        run.start_thread()
    reg.journal.event("run_resumed", run_id, {"flow": fl.name})
    return True


def resume_pending(rt: Any = None) -> list[str]:
    """Resume every pending run whose flow is defined; the others resume
    when their flow is defined (a restored namespace, or the cell re-run).
    The kernel calls this once it has restored the namespace (on_ready)."""
    reg = registry()
    resumed, waiting = [], []
    with reg.lock:
        reg.ready = True
    pending = reg.journal.pending_runs()
    gate = trust.gate(reg.journal.store)
    if pending and not gate.trusted:
        # Replaying a journal may unpickle what another machine wrote: the runs
        # stay pending, untouched, until the user trusts the history.
        if rt is not None:
            rt.notices.append(f"flowmetal: {len(pending)} pending flow run(s) wait, not resumed: "
                              + trust.untrusted_message(reg.journal.store.path))
        pending = []
    for row in pending:
        fl = reg.flows.get(row["flow"])
        if fl is None:
            with reg.lock:
                reg.orphans.setdefault(row["flow"], set()).add(row["run_id"])
            waiting.append(f"{row['flow']}/{row['run_id'][:8]}")
            if row["deadline"] is not None:  # it times out even if its flow never comes back
                reg.deadlines.watch(run_handle(row["run_id"]))
        elif _resume(fl, row["run_id"]):
            resumed.append(f"{row['flow']}/{row['run_id'][:8]}")
    for fl in list(reg.flows.values()):
        _schedule(fl)
        _watch(fl)
    if rt is not None and (resumed or waiting):
        line = f"flowmetal: resumed {len(resumed)} flow run(s){_which(resumed)}"
        if waiting:
            line += f"; {len(waiting)} wait for their flow to be defined{_which(waiting)}"
        rt.notices.append(line)
    return resumed


def _which(runs: list[str], ids_up_to: int = 3) -> str:
    """' (a/1b4bb98d, b/a69e841a)' for a few runs; ' (job 298, fan 2)' for many:
    a kernel resuming hundreds of runs must not print hundreds of ids."""
    if not runs:
        return ""
    if len(runs) <= ids_up_to:
        return f" ({', '.join(runs)})"
    counts: dict[str, int] = {}
    for r in runs:
        name = r.rsplit("/", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{name} {n}" for name, n in top[:3])
    more = f", {len(top) - 3} other flows" if len(top) > 3 else ""
    return f" ({shown}{more}; `%fm runs` lists them)"


def on_ready(rt: Any) -> None:
    """The kernel's start-up hook (runtime.on_ready)."""
    resume_pending(rt)
