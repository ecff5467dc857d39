"""Turns one cell execution into a step record: captures its outputs off the
wire, keeps the in-flight marker that makes kill -9 honest, and writes the
record in one INSERT before the reply goes out.

Outputs are captured where every one of them passes, Session.send on IOPub,
rather than in the display hook, publisher and streams separately: that sees
exactly what the frontend sees, in the order it sees it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Any

from .inflight import InflightMarker
from .store import StepRecord, Store, utcnow

log = logging.getLogger(__name__)

OUTPUT_TYPES = {
    "stream", "display_data", "execute_result", "error", "clear_output", "update_display_data",
}
RUNNING_ROW_AFTER_S = 1.0  # long cells become visible as 'running' in SQL after this


def is_history_query(code: str, cell_sql_ours: bool = True, line_sql_ours: bool = True) -> bool:
    """Cells that only ask about the history (``%fm log``, ``%%sql``) are not
    steps: recording them would make every look at the log change the log.
    ``%%sql``/``%sql`` are ours only while our magic is the one registered:
    after `%load_ext sql` they are jupysql's, and its cells are steps."""
    lines = [ln.strip() for ln in code.strip().splitlines() if ln.strip()]
    if not lines:
        return False
    cells = ("%%sql", "%%fmsql") if cell_sql_ours else ("%%fmsql",)
    if lines[0].startswith(cells):
        return " -o" not in lines[0]  # -o NAME writes to the namespace: a step
    if lines[0].startswith("%%"):
        return False
    ours = ("%fm", "%sql") if line_sql_ours else ("%fm",)
    return all(ln.startswith(ours) and " -o " not in ln for ln in lines)


def flatten_outputs(nb_outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nbformat-like outputs -> rows (position, output_type, mime, content, meta)."""
    rows: list[dict[str, Any]] = []
    for pos, out in enumerate(nb_outputs):
        kind = out["output_type"]
        if kind == "stream":
            rows.append(_row(pos, kind, "text/plain", out["text"], {"name": out["name"]}))
        elif kind == "error":
            body = {k: out.get(k) for k in ("ename", "evalue", "traceback")}
            rows.append(_row(pos, kind, "application/vnd.jupyter.error+json", json.dumps(body), {}))
        elif kind == "clear_output":
            rows.append(_row(pos, kind, None, None, {"wait": out.get("wait", False)}))
        else:
            meta: dict[str, Any] = {}
            if out.get("execution_count") is not None:
                meta["execution_count"] = out["execution_count"]
            if out.get("display_id"):
                meta["display_id"] = out["display_id"]
            for mime, value in (out.get("data") or {}).items():
                content = value if isinstance(value, str) else json.dumps(value)
                m = dict(meta)
                if mime in (out.get("metadata") or {}):
                    m["metadata"] = out["metadata"][mime]
                rows.append(_row(pos, kind, mime, content, m))
    return rows


def unflatten_outputs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as stored -> nbformat v4 output dicts (for notebooks and widgets)."""
    outs: dict[int, dict[str, Any]] = {}
    for r in rows:
        meta = r.get("meta") or {}
        if isinstance(meta, str):
            meta = json.loads(meta)
        kind, pos = r["output_type"], r["position"]
        if kind == "stream":
            outs[pos] = {"output_type": "stream", "name": meta.get("name", "stdout"), "text": r["content"]}
        elif kind == "error":
            outs[pos] = {"output_type": "error", **json.loads(r["content"])}
        elif kind == "clear_output":
            outs[pos] = {"output_type": "clear_output", "wait": meta.get("wait", False)}
        else:
            out = outs.setdefault(pos, {"output_type": kind, "data": {}, "metadata": {}})
            value = r["content"]
            if r["mime"].endswith("json") and r["mime"] != "text/plain":
                try:
                    value = json.loads(value)
                except (TypeError, ValueError):
                    pass
            out["data"][r["mime"]] = value
            if "metadata" in meta:
                out["metadata"][r["mime"]] = meta["metadata"]
            if kind == "execute_result":
                out["execution_count"] = meta.get("execution_count")
            if meta.get("display_id"):
                out.setdefault("transient", {})["display_id"] = meta["display_id"]
    return [outs[k] for k in sorted(outs)]


def _row(pos: int, kind: str, mime: str | None, content: str | None, meta: dict) -> dict[str, Any]:
    return {"position": pos, "output_type": kind, "mime": mime, "content": content, "meta": meta}


class OutputTap:
    """Wraps a Session's send to copy IOPub outputs of the current request.

    Stream messages are sent from the IOPub thread, so appends come from two
    threads; list.append is atomic, which is all this needs.
    """

    def __init__(self, session: Any):
        self._send = session.send
        self._msg_id: str | None = None
        self.outputs: list[dict[str, Any]] = []
        session.send = self._tap

    def start(self, msg_id: str | None) -> None:
        self.outputs = []
        self._msg_id = msg_id

    def stop(self) -> list[dict[str, Any]]:
        self._msg_id = None
        return _merge_streams(self.outputs)

    def _tap(self, stream, msg_or_type, content=None, parent=None, *args, **kwargs):
        msg = self._send(stream, msg_or_type, content, parent, *args, **kwargs)
        if self._msg_id is not None and msg:
            try:
                kind = msg["header"]["msg_type"]
                if kind in OUTPUT_TYPES and msg["parent_header"].get("msg_id") == self._msg_id:
                    self.outputs.append(_as_output(kind, msg["content"]))
            except (KeyError, TypeError, AttributeError):
                pass
        return msg


def _as_output(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    if kind == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if kind == "error":
        return {"output_type": "error", "ename": content.get("ename"),
                "evalue": content.get("evalue"), "traceback": content.get("traceback", [])}
    if kind == "clear_output":
        return {"output_type": "clear_output", "wait": content.get("wait", False)}
    out = {"output_type": kind, "data": content.get("data", {}), "metadata": content.get("metadata", {})}
    if kind == "execute_result":
        out["execution_count"] = content.get("execution_count")
    display_id = (content.get("transient") or {}).get("display_id")
    if display_id:
        out["display_id"] = display_id
    return out


def _merge_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive chunks of one stream become one output, as in a notebook."""
    merged: list[dict[str, Any]] = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (prev and out["output_type"] == "stream" and prev["output_type"] == "stream"
                and prev["name"] == out["name"]):
            merged[-1] = {**prev, "text": prev["text"] + out["text"]}
        else:
            merged.append(out)
    return merged


def recover_interrupted(store: Store, marker: InflightMarker) -> list[int]:
    """Mark steps whose kernel died mid-cell as 'interrupted'; return them."""
    found = {rec.step: rec for rec in store.unfinished_steps()}
    pending = marker.read()
    if pending is not None and pending.step not in found and store.step(pending.step) is None:
        found[pending.step] = pending
    for rec in found.values():
        rec.status = "interrupted"
        rec.finished_at = None
        rec.error_name = "KernelDied"
        rec.error_value = "the kernel ended while this cell was running"
        store.append_step(rec)
    marker.clear()
    return sorted(found)


class CellRecorder:
    """Builds and commits the record of one cell at a time."""

    def __init__(self, store: Store, session: Any, kernel_id: str):
        self.store = store
        self.kernel_id = kernel_id
        self.tap = OutputTap(session)
        self.marker = InflightMarker(store.path)
        self.current: StepRecord | None = None
        # Orders the watchdog's 'running' row before the final one: without it
        # a late watchdog could append 'running' after the cell's final record.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # One long-lived watchdog rather than a timer per cell: starting a
        # thread per cell costs more than the rest of begin() together.
        threading.Thread(target=self._watch, name="fm-running-rows", daemon=True).start()

    def begin(self, *, code: str, branch: str, parent: int | None, cell_id: str | None,
              execution_count: int | None, msg_id: str | None) -> StepRecord:
        rec = StepRecord(
            step=self.store.next_step(), branch=branch, parent=parent, kernel_id=self.kernel_id,
            cell_id=cell_id, execution_count=execution_count, code=code, status="running",
            started_at=utcnow(),
        )
        self.marker.write(rec)
        self.tap.start(msg_id)
        self.current = rec
        self._wake.set()
        return rec

    def _watch(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            rec = self.current
            if rec is None:
                continue
            time.sleep(RUNNING_ROW_AFTER_S)
            with self._lock:
                if self.current is rec:
                    self.store.append_step(StepRecord(**{**rec.__dict__, "outputs": []}))

    def finish(self, reply: dict[str, Any], state: dict[str, Any] | None = None,
               entries: list[dict[str, Any]] | None = None) -> StepRecord:
        rec = self.current
        assert rec is not None, "finish() without begin()"
        with self._lock:
            self.current = None
        rec.outputs = flatten_outputs(self.tap.stop())
        rec.finished_at = utcnow()
        rec.duration_ms = (rec.finished_at - rec.started_at).total_seconds() * 1000.0
        if reply.get("status") == "ok":
            rec.status = "ok"
        else:
            rec.error_name = reply.get("ename")
            rec.error_value = reply.get("evalue")
            rec.traceback = reply.get("traceback")
            rec.status = "interrupted" if rec.error_name == "KeyboardInterrupt" else "error"
        rec.state = state
        try:
            self.store.append_step(rec, entries or ())
        except BaseException:
            self.store.release_step(rec.step)  # the next cell takes it: no gap
            raise
        self.marker.write(dataclasses.replace(rec, outputs=[], state=None, traceback=None),
                          committed=True)
        return rec

    def close(self) -> None:
        self.marker.clear()
