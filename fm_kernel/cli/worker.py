"""`fm worker`: keep a history's pending flow runs and schedules going with
no notebook open. It holds the history as a kernel would (so only one of the
two runs at a time), restores the last state to get the flows' code back,
serves the endpoint for callbacks and signals, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
import uuid
from pathlib import Path

from .. import errors
from ..state import navigate
from .. import runtime
from ..record.store import Store
from ..state.states import States


def run_worker(history: Path, stop: threading.Event | None = None) -> int:
    if not history.exists():
        print(f"fm worker: no history at {history}", file=sys.stderr)
        return 1
    try:
        Store.open(history).close()  # fail early and plainly if a kernel holds it
    except errors.HistoryLocked as exc:
        print(f"fm worker: {exc}; that kernel already runs its flows", file=sys.stderr)
        return 1
    rt = runtime.Runtime(kernel_id=f"worker-{uuid.uuid4().hex[:12]}", history=history)
    rt._open()
    if rt.store is None:
        print(f"fm worker: {rt.open_error}", file=sys.stderr)
        return 1
    runtime.install(rt)
    rt.flows  # the flows restored below register with this history's registry
    ns: dict = {"__name__": "__main__"}
    rt.states = States(rt.store, ns)
    try:
        line = navigate.resume(rt)
        print(f"fm worker: {line or 'no recorded state to restore'}", file=sys.stderr)
    except errors.FlowmetalError as exc:
        print(f"fm worker: could not restore the flows' code: {exc}", file=sys.stderr)
    from ..flows.runs import resume_pending

    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    resumed = resume_pending(rt)
    print(f"fm worker: serving {history} at {rt.endpoint.url if rt.endpoint else '(no endpoint)'}; "
          f"{len(resumed)} pending run(s) resumed; SIGTERM stops", file=sys.stderr, flush=True)
    stop.wait()
    print("fm worker: stopping; journal flushed, history closed", file=sys.stderr)
    rt.flows.close()
    rt.close(clean=True)
    return 0
