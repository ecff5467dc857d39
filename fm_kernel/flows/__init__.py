"""Durable flows: ``@fm.flow`` functions whose steps are journaled, so a run
survives kernel death, sleeps for days, waits for external events and fans
out work. This module is the public face (``fm.flow``, ``fm.step``, ``Run``…);
the machinery is behind it:

    core       Flow, Step, Run, the per-run context and replay, the registry
    ops        journaled primitives inside a flow: now/random/uuid4, sleep,
               callback, wait_for, map
    dask_map   fm.map on a Dask cluster
    schedule   cron schedules
    journal    run journals: the append-only flow log, checkpointed into DuckDB
    routes     the endpoint's flow routes (registered by whoever starts it)
"""

from __future__ import annotations

from ..errors import (
    Cancelled, FlowError, NoSuchFlow, NondeterminismError, NoSuchRun, NotStorable, StepError,
    Timeout,
)
from .core import Flow, Run, Step, StepContext, flow, get_run, runs, step, step_context
from .ops import Callback, callback, map, now, random, sleep, uuid4, wait_for

__all__ = [
    "Callback", "Cancelled", "Flow", "FlowError", "NoSuchFlow", "NoSuchRun", "NondeterminismError",
    "NotStorable", "Run", "Step", "StepContext", "StepError", "Timeout", "callback", "flow",
    "get_run", "map", "now", "random", "runs", "sleep", "step", "step_context", "uuid4", "wait_for",
]
