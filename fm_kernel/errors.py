"""Every error this package raises on purpose, in one tree. Each message
names the thing (path, step, run, variable) and what the user can do next,
in one line.

    FlowmetalError
    ├── UsageError                 bad arguments to a magic, API call or CLI command
    │   ├── NoSuchStep             a step number the history does not have
    │   └── SQLError               a query refused (not one read-only SELECT) or rejected by DuckDB
    ├── HistoryError               the history cannot be used as asked
    │   ├── HistoryLocked          another live process holds it
    │   ├── HistoryUnwritable      its folder or file cannot be written
    │   ├── SchemaTooNew           written by a newer fm_kernel
    │   ├── CorruptObject          an object file is missing or does not match its hash
    │   ├── Untrusted              its objects would be unpickled, but it is not trusted here
    │   ├── UnsafeBundle           a bundle member is a link, device, outside the folder or too big
    │   └── QueryFailed            DuckDB refused a query (internal; surfaces as SQLError)
    └── FlowError                  durable flows
        ├── NondeterminismError    replay met a different step than the journal recorded
        ├── Timeout                a step, wait, callback, signal or run did not finish in time
        ├── Cancelled              the run was cancelled
        ├── StepError              a recorded step error whose exception cannot be rebuilt
        ├── NotStorable            a value is neither plain JSON nor picklable
        ├── NoSuchRun              a run id this history does not have
        ├── RunFinished            a signal (or other control) sent to a run that has finished
        ├── NoSuchFlow             a flow name no cell of this kernel defined
        ├── NoSuchTask             a task id this history does not have
        ├── LeaseLost              a task heartbeat or completion with a lease that is not the task's now
        ├── TaskFailed             an external task (fm.task) failed for good
        └── NonRetryable           raised by a task worker's body: fail the task now, no retry

``Timeout`` is also a ``TimeoutError`` so that ``except TimeoutError`` keeps
working around ``run.result(timeout=...)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "Cancelled", "CorruptObject", "FlowError", "FlowmetalError", "HistoryError", "HistoryLocked",
    "HistoryUnwritable", "LeaseLost", "NoSuchFlow", "NoSuchRun", "NoSuchStep", "NoSuchTask",
    "NonRetryable", "NondeterminismError",
    "NotStorable", "QueryFailed", "SQLError", "SchemaTooNew", "StepError", "TaskFailed", "Timeout",
    "UnsafeBundle", "Untrusted", "UsageError",
]


class FlowmetalError(Exception):
    """Base of every error this package raises on purpose."""


# -- usage -------------------------------------------------------------------------------------

class UsageError(FlowmetalError):
    """Bad arguments to a magic, API call or CLI command."""


class NoSuchStep(UsageError):
    def __init__(self, step: object):
        self.step = step
        super().__init__(f"no step {step} in this history; `%fm log --all` lists the steps")


class SQLError(UsageError):
    """A query DuckDB rejected, or one that would change the history."""


# -- the history -------------------------------------------------------------------------------

class HistoryError(FlowmetalError):
    """The history database cannot be used as asked."""


class HistoryLocked(HistoryError):
    def __init__(self, path: Path, pid: str | None):
        self.path, self.pid = path, pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"history {path} is in use by {holder}; close that kernel or set FM_HISTORY to another file"
        )


class HistoryUnwritable(HistoryError):
    def __init__(self, path: Path, cause: BaseException):
        self.path, self.cause = path, cause
        super().__init__(
            f"cannot write history {path}: {cause}; make its folder writable or set FM_HISTORY"
        )


class SchemaTooNew(HistoryError):
    def __init__(self, path: Path, found: int, known: int):
        self.path, self.found, self.known = path, found, known
        super().__init__(
            f"history {path} has schema version {found} but this fm_kernel knows up to {known}; "
            "upgrade flowmetal-kernel to open it"
        )


class CorruptObject(HistoryError):
    """An object file is missing or its bytes do not hash to its key."""

    def __init__(self, key: str, path: Path, problem: str) -> None:
        super().__init__(
            f"object {key} at {path} is {problem}; the state that refers to it "
            f"cannot be loaded. Restore the history's .objects folder from a backup, "
            f"or rewind to another step."
        )
        self.key = key
        self.path = path


class Untrusted(HistoryError):
    """Loading would unpickle objects of a history not trusted on this machine."""


class UnsafeBundle(HistoryError):
    """A bundle member that would write outside its folder, is not a plain
    file or folder, or is larger than the import allows."""


class QueryFailed(HistoryError):
    """DuckDB refused a query; ``message`` is its first line."""

    def __init__(self, message: str, wrote: bool = False):
        self.message, self.wrote = message, wrote
        super().__init__(message)


# -- flows -------------------------------------------------------------------------------------

class FlowError(FlowmetalError):
    """Base of the errors flows raise on purpose."""


class NondeterminismError(FlowError):
    """Replay met a step other than the one the run's journal recorded there."""


class Timeout(FlowError, TimeoutError):
    """A step, sleep-free wait, callback or signal did not finish in time, or
    a run passed its deadline (``@flow(timeout=...)``: the run is cancelled)."""


class Cancelled(FlowError):
    """The run was cancelled (by `run.cancel()`, the endpoint, or its parent)."""


class StepError(FlowError):
    """A recorded step error whose original exception cannot be rebuilt."""


class NotStorable(FlowError):
    """A value is neither plain JSON nor picklable."""


class NoSuchRun(FlowError):
    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"no flow run {run_id!r} in this history; `fm.runs()` (or `fm runs`) lists them")


class RunFinished(FlowError):
    def __init__(self, run_id: str, status: str, what: str):
        self.run_id, self.status = run_id, status
        super().__init__(f"run {run_id} has finished ({status}), so {what} would never be taken; "
                         "start a new run (or fork this one) to continue")


class NoSuchFlow(FlowError):
    def __init__(self, name: str, known: Iterable[str] = ()):
        self.name = name
        super().__init__(f"no flow named {name!r} is defined in this kernel; run the cell that "
                         "defines it (flows known: " + (", ".join(sorted(known)) or "none") + ")")


class NoSuchTask(FlowError):
    def __init__(self, task_id: str):
        self.task_id = task_id
        super().__init__(f"no task {task_id!r} in this history; SELECT * FROM tasks lists them")


class LeaseLost(FlowError):
    """A heartbeat or completion whose lease is not the task's current one:
    it expired (the task was offered again) or the task has finished."""


class TaskFailed(FlowError):
    """An external task (fm.task) failed for good: a non-retryable failure,
    or its attempts were spent."""


class NonRetryable(FlowError):
    """Raised by the body a task worker runs (``fm.serve_tasks``): the task
    fails at once, whatever retries its ``fm.task`` allows."""
