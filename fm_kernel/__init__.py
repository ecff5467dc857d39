"""Flowmetal kernel: every notebook cell a durable step in DuckDB.

    import fm_kernel as fm
    fm.history().steps()
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import checkout, fork, history, rewind, undo
from .errors import FlowmetalError, HistoryError, UsageError
from .flows import (
    Callback, Cancelled, Flow, NoSuchFlow, NondeterminismError, NoSuchRun, Run, Step,
    StepContext, StepError, Timeout, callback, flow, get_run, map, now, random, runs, sleep,
    step, step_context, uuid4, wait_for,
)
from .journal import NotStorable

__all__ = [
    "Callback", "Cancelled", "Flow", "FlowmetalError", "HistoryError", "NoSuchFlow",
    "NoSuchRun", "NondeterminismError", "NotStorable", "Run", "Step", "StepContext",
    "StepError", "Timeout", "UsageError", "__version__", "callback", "checkout", "flow",
    "fork", "get_run", "history", "map", "now", "random", "rewind", "runs", "sleep", "step",
    "step_context", "undo", "uuid4", "wait_for",
]
