"""The serving process of `fm worker` (cli/handover.py starts it and stands
by between its turns): it holds the history as a kernel would, restores the
last state to get the flows' code back, resumes pending runs and schedules,
and serves the endpoint for callbacks and signals. It ends on SIGTERM, or
when a kernel asks for the history (``POST /worker/release``): then it
answers every other request 503, stops its scheduler and runs, flushes the
journal, closes its socket (so the kernel can bind the kept port) and only
then the history, and exits with RELEASED.

Run as ``python -m fm_kernel.cli.worker HISTORY [SUPERVISOR_PID]``."""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from .. import errors, runtime
from ..record.store import Store
from ..state import navigate
from ..state.states import States

STOPPED, FAILED, RELEASED, HELD = 0, 1, 3, 4  # exit codes the supervisor reads
DRAIN_S = 3.0  # for requests already let in to answer before the socket closes


def run_worker(history: Path, stop: threading.Event | None = None,
               token: str | None = None) -> int:
    """Serve ``history`` until SIGTERM or a release; ``token``: the endpoint
    token to keep (the previous holder's), else a new one."""
    if not history.exists():
        print(f"fm worker: no history at {history}", file=sys.stderr)
        return FAILED
    try:
        Store.open(history).close()  # a kernel holds it: the supervisor stands by
    except errors.HistoryLocked:
        return HELD
    rt = runtime.Runtime(kernel_id=f"worker-{uuid.uuid4().hex[:12]}", history=history)
    rt.role = "worker"
    rt.kept_token = token
    rt._open()
    if rt.store is None:
        print(f"fm worker: {rt.open_error}", file=sys.stderr)
        return FAILED
    if rt.store.path != history:  # taken between the look and the open: never a sibling
        rt.close(clean=True)
        return HELD
    stop = stop or threading.Event()
    asked: dict[str, Any] = {}
    if rt.endpoint is not None:  # a kernel may ask while the flows are still being restored
        rt.endpoint.on_release = lambda who: (asked.update(who=who), stop.set())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime.install(rt)
    _restore(rt)
    from ..flows.runs import resume_pending

    resumed = resume_pending(rt)
    rt.ready_to_serve()  # until now every request was answered 503
    print(f"fm worker: serving {history} at {rt.endpoint.url if rt.endpoint else '(no endpoint)'}; "
          f"{len(resumed)} pending run(s) resumed; SIGTERM stops", file=sys.stderr, flush=True)
    stop.wait()
    return _let_go(rt, history, asked.get("who"))


def _restore(rt: runtime.Runtime) -> None:
    rt.flows  # the flows restored below register with this history's registry
    rt.states = States(rt.store, {"__name__": "__main__"})
    try:
        line = navigate.resume(rt)
        print(f"fm worker: {line or 'no recorded state to restore'}", file=sys.stderr)
    except errors.FlowmetalError as exc:
        print(f"fm worker: could not restore the flows' code: {exc}", file=sys.stderr)


def _let_go(rt: runtime.Runtime, history: Path, asker: dict | None) -> int:
    """Stop at safe points, in the order a hand-over needs: no new request
    (503), no new run or slot, the journal flushed, the socket closed, then
    the history. A step still running is cut off unrecorded and runs again
    under the next holder (at least once, docs/reliability.md)."""
    if rt.endpoint is not None:
        rt.endpoint.drain(DRAIN_S)
    rt.flows.close()
    rt.close(clean=True)
    if asker is None:
        print("fm worker: stopping; journal flushed, history closed", file=sys.stderr, flush=True)
        return STOPPED
    who = asker.get("pid") or "a kernel"
    print(f"fm worker: handed {history} over to process {who}; journal flushed, history closed",
          file=sys.stderr, flush=True)
    return RELEASED


def _die_with_parent(supervisor: int | None) -> None:
    """Linux: SIGTERM this process when its supervisor dies, so a killed
    `fm worker` leaves no serving process behind to hold the history. A
    supervisor already dead before the prctl would never send it: that is
    seen as a parent that is not ``supervisor`` any more."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if supervisor is not None and os.getppid() != supervisor:
        os._exit(STOPPED)


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    code = run_worker(Path(sys.argv[1]), token=sys.stdin.readline().strip() or None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # run threads cut off here were journaled up to their last step
