"""Flowmetal kernel: every notebook cell a durable step in DuckDB.

    import fm_kernel as fm
    fm.history().steps()

The public surface is ``__all__``. Importing the package loads only the
error tree: the history, flows and their machinery load on first use of a
name (PEP 562 ``__getattr__``), so ``import fm_kernel`` in a script, a
worker or the ``fm`` command pulls in no DuckDB, tornado or ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    Cancelled, FlowmetalError, HistoryError, NoSuchFlow, NondeterminismError, NoSuchRun,
    NonRetryable, NotStorable, StepError, Timeout, UsageError,
)

__version__ = "0.1.0"

# name -> the module that defines it (relative to this package)
_LAZY = {
    **dict.fromkeys(["checkout", "fork", "history", "rewind", "undo"], ".api"),
    **dict.fromkeys(["Callback", "Flow", "Queue", "Run", "Step", "StepContext", "callback", "files", "flow",
                     "get_run", "map", "now", "patched", "poll", "random", "recv", "runs", "send",
                     "set_event", "sleep", "step", "step_context", "task", "uuid4", "wait_for"],
                    ".flows"),
    "serve_tasks": ".cli.task_worker",
}

__all__ = sorted([
    "Cancelled", "FlowmetalError", "HistoryError", "NoSuchFlow", "NoSuchRun", "NondeterminismError",
    "NonRetryable", "NotStorable", "StepError", "Timeout", "UsageError", "__version__", *_LAZY,
])

if TYPE_CHECKING:
    from .api import checkout, fork, history, rewind, undo
    from .flows import (
        Callback, Flow, Queue, Run, Step, StepContext, callback, files, flow, get_run, map, now,
        patched, poll, random, recv, runs, send, set_event, sleep, step, step_context, task, uuid4,
        wait_for,
    )
    from .cli.task_worker import serve_tasks


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fm_kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
