"""One exception hierarchy. Each message names the thing (path, step, run,
variable) and what the user can do next, in one line."""

from __future__ import annotations

from pathlib import Path


class FlowmetalError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(FlowmetalError):
    """Bad arguments to a magic, API call or CLI command."""


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


class NoSuchStep(UsageError):
    def __init__(self, step: object):
        self.step = step
        super().__init__(f"no step {step} in this history; `%fm log --all` lists the steps")
