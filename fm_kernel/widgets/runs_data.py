"""What the flow runs view shows, read through the flows package and made
into rows: runs newest first, a run's journal one entry per position, and
the short texts (values, errors, what a pending step waits for) its rows
are made of. No widgets here.

The flows package is reached only through `flows_journal()`, `get_run()`
and `callback_url()` below, so that a change inside flows touches one place here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import FlowError
from .render import duration_text

__all__ = ["PENDING", "RUN_LIMIT", "RunRow", "StepView", "clock", "error_text", "flows_journal",
           "get_run", "pending_text", "read_run", "read_runs", "read_steps", "value_text"]

RUN_LIMIT = 100
PENDING = ("enqueued", "running", "sleeping", "waiting")  # enqueued: on an fm.Queue, not started
FAILED_ATTEMPT = ("error", "timeout", "failed")


# -- the door to flows ---------------------------------------------------------------------


def flows_journal() -> Any:
    """This history's run journal (``runs``, ``run_row``, ``step_rows``,
    ``signals``), through the flows registry. Imported here, not at the
    top: a timeline never opened on its runs section need not load flows."""
    from .. import flows

    return flows.registry().journal


def get_run(run_id: str) -> Any:
    """The flows package's ``Run`` handle (fork, signal, cancel)."""
    from .. import flows

    return flows.get_run(run_id)


def callback_url(cb_id: str) -> str:
    """The URL a callback is posted to, or its path when this kernel has no
    endpoint (the path is what stays valid on another server)."""
    from .. import flows

    path = f"/callbacks/{cb_id}"
    try:
        return flows.registry().base_url() + path
    except FlowError:
        return path


# -- rows ------------------------------------------------------------------------------------


@dataclass
class RunRow:
    run_id: str
    flow: str
    status: str
    started_at: float | None
    finished_at: float | None
    forked_from_run: str | None = None
    forked_from_step: int | None = None

    @classmethod
    def from_row(cls, d: dict[str, Any]) -> "RunRow":
        return cls(d["run_id"], d["flow"], d["status"], _epoch(d.get("started_at")),
                   _epoch(d.get("finished_at")), d.get("forked_from_run"),
                   d.get("forked_from_step"))

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, (end - self.started_at) * 1000)


@dataclass
class StepView:
    """One position of a run's journal: its latest record, the attempts
    before it, and what it waits for if it is pending."""

    position: int
    name: str
    status: str
    attempt: int
    started_at: float | None
    finished_at: float | None
    duration_ms: float | None
    result: str
    error: str
    pending: str = ""
    failed_attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def read_runs(limit: int = RUN_LIMIT) -> list[RunRow]:
    return [RunRow.from_row(d) for d in flows_journal().runs(limit).dicts()]


def read_run(run_id: str) -> RunRow | None:
    row = flows_journal().run_row(run_id)
    return RunRow.from_row(row) if row is not None else None


def read_steps(run_id: str) -> list[StepView]:
    """The run's journal, one entry per position (records are per attempt and
    per state change: a wait writes 'waiting', then 'ok')."""
    by_pos: dict[int, list[dict[str, Any]]] = {}
    for r in flows_journal().step_rows(run_id):
        by_pos.setdefault(r["position"], []).append(r)
    return [_step_view(p, by_pos[p]) for p in sorted(by_pos)]


def _step_view(position: int, recs: list[dict[str, Any]]) -> StepView:
    last, first = recs[-1], recs[0]
    started, finished = first.get("started_at"), last.get("finished_at")
    status = last["status"]
    if status in ("sleeping", "waiting") and started is not None:
        duration = (time.time() - started) * 1000
    elif started is not None and finished is not None:
        duration = max(0.0, (finished - started) * 1000)
    else:
        duration = last.get("duration_ms")
    detail = last.get("detail") or {}
    return StepView(
        position=position, name=last["name"], status=status,
        attempt=max((r.get("attempt") or 0) for r in recs), started_at=started,
        finished_at=None if status in PENDING else finished, duration_ms=duration,
        result=value_text(last.get("result")) if status == "ok" else "",
        error=error_text(last.get("error")),
        pending=pending_text(status, detail),
        failed_attempts=sum(1 for r in recs if r["status"] in FAILED_ATTEMPT and r is not last),
        detail=detail)


# -- short texts -------------------------------------------------------------------------------


def _epoch(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.timestamp()
    return float(v)


def clock(ts: float | None, with_date: bool = True) -> str:
    if ts is None:
        return "–"
    d = dt.datetime.fromtimestamp(ts)
    return d.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "due now"
    return "in " + duration_text(seconds * 1000)


def _clip(text: str, width: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def value_text(text: Any) -> str:
    """A journal column (JSON text) as one short line; pickled values by their repr."""
    if text is None:
        return ""
    try:
        v = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return _clip(str(text))
    if isinstance(v, dict) and v.get("$fm") == "pickle":
        return _clip(f"{v.get('type')}: {v.get('repr')}")
    return _clip(json.dumps(v))


def error_text(text: Any) -> str:
    if not text:
        return ""
    try:
        info = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return _clip(str(text))
    return _clip(f"{info.get('type', 'error')}: {info.get('message', '')}")


def pending_text(status: str, detail: dict[str, Any]) -> str:
    now = time.time()
    if status == "sleeping" and detail.get("wake_at") is not None:
        return f"wakes at {clock(detail['wake_at'])} ({_in(detail['wake_at'] - now)})"
    if status != "waiting":
        return ""
    deadline = detail.get("deadline")
    until = (f", times out at {clock(deadline)} ({_in(deadline - now)})"
             if deadline is not None else ", no timeout")
    if detail.get("signal") is not None:
        return f"waits for signal {detail['signal']!r}{until}"
    if detail.get("callback") is not None:
        return f"waits for a POST to {callback_url(detail['callback'])}{until}"
    if detail.get("message") is not None:  # fm.recv
        return f"waits for a message on topic {detail['message']!r}{until}"
    if detail.get("key") is not None and detail.get("run_id"):  # run.get_event in a flow
        return f"waits for event {detail['key']!r} of run {str(detail['run_id'])[:8]}{until}"
    return "waiting" + until
