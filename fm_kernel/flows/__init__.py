"""Durable flows: ``@fm.flow`` functions whose steps are journaled, so a run
survives kernel death, sleeps for days, waits for external events and fans
out work. This module is the public face (``fm.flow``, ``fm.step``, ``Run``…);
the machinery is behind it, each module importing only those below it:

    routes     the endpoint's flow routes (passed to the endpoint by whoever starts it)
    messages   messages between runs (send/recv) and events a run publishes (set_event)
    ops        journaled primitives inside a flow: now/random/uuid4, patched,
               sleep, callback, wait_for, map; callback delivery
    dask_map   fm.map on a Dask cluster
    runs       Flow, starting runs (child runs once), registration and resume
    queues     fm.Queue: enqueued runs started within concurrency, rate and priority
    run        Run: its record, execution, result, cancel, timeout, fork, signals
    run_events run.get_event: the values a run publishes, read and waited for
    deadlines  run timeouts: validation, the thread that expires runs
    steps      Step, attempts, retries, timeouts
    context    FlowRegistry (one per process, owned by the runtime), the
               current run and step, replay
    schedule   cron schedules and their overlap policies (skip, queue, allow)
    tasks      fm.task: steps done by worker processes over HTTP (task_routes: their routes)
    events     named events: POST /events/<name> (event_routes), @flow(on=name), wait_event
    sources    fm.files, fm.poll: watcher threads that deliver named events
    journal    run journals: the append-only flow log, checkpointed into DuckDB

``registry()`` is internal but supported: tools and tests reach the journal
(``registry().journal``) and drop a flow (``registry().forget(name)``) there.
"""

from __future__ import annotations

from ..errors import (
    Cancelled, FlowError, NoSuchFlow, NondeterminismError, NoSuchRun, NotStorable, StepError,
    Timeout,
)
from .context import FlowRegistry, StepContext, configure, registry, step_context
from .ops import Callback, callback, map, now, patched, random, sleep, uuid4, wait_for
from .runs import Flow, flow  # before .run's runs(): importing the module .runs sets that name
from .run import Run, get_run, runs
from .queues import Queue
from .steps import Step, step
from .tasks import task
from .events import event_source, send_event, wait_event
from .messages import recv, send, set_event
from .sources import files, poll

__all__ = [
    "Callback", "Cancelled", "Flow", "FlowError", "FlowRegistry", "NoSuchFlow", "NoSuchRun",
    "NondeterminismError", "NotStorable", "Run", "Step", "StepContext", "StepError", "Timeout",
    "callback", "configure", "flow", "get_run", "map", "now", "random", "registry", "runs", "sleep",
    "step", "step_context", "task", "uuid4", "wait_for", "event_source", "send_event", "wait_event",
    "recv", "send", "set_event", "patched", "files", "poll", "Queue",
]
