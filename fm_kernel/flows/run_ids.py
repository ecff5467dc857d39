"""Runs named by their caller (``start(run_id=...)``, ``q.enqueue(run_id=...)``,
HTTP ``run_id`` or ``Idempotency-Key``): one run per id, however often and by
however many threads it is asked for."""

from __future__ import annotations

import re
from typing import Callable

from ..errors import UsageError
from .context import registry
from .run import Run, run_handle

RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")


def once_per_id(flow: str, run_id: str, make: Callable[[], Run]) -> tuple[Run, bool]:
    """(the run with this id, True if ``make`` made it now): an id seen before
    (live in this process or in the record) returns that run; an id of
    another flow's run is refused."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise UsageError(f"run id {run_id!r} is not allowed; use 1-128 letters, digits, '_' or '-'")
    reg = registry()
    with reg.lock:  # one run per id, however many ask at once
        live = reg.runs.get(run_id)
        row = reg.journal.run_row(run_id)
        known = row["flow"] if row is not None else (live.flow_name if live is not None else None)
        if known is not None:
            if known != flow:
                raise UsageError(f"run id {run_id!r} is a run of flow {known!r}, not {flow!r}; "
                                 "choose another id")
            return run_handle(run_id), False
        return make(), True
