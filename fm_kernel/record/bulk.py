"""Columnar writes of many records in one transaction (imports, bulk builds,
batches of events): a mixin of Store, through its connection and its
transaction, because the per-row path costs a statement per record."""

from __future__ import annotations

import json
from typing import Any, Sequence

from .rows import StepRecord, utcnow


class BulkWrites:
    def append_steps(self, recs: Sequence[StepRecord],
                     entries: Sequence[dict[str, Any]] = ()) -> None:
        """Many step records in one transaction, columnar (imports, bulk
        builds): the per-row path costs a statement per record."""
        import pyarrow as pa

        with self.transaction():
            if entries:
                self._conn.register("fm_batch_entries", pa.Table.from_pylist([
                    {"id": e["id"], "name": e["name"], "type": e["type"],
                     "size_bytes": e["size_bytes"], "summary": e["summary"],
                     "value": json.dumps(e["value"]) if e.get("value") is not None else None,
                     "restorable": e["restorable"], "reason": e["reason"], "entry": json.dumps(e)}
                    for e in entries]))
                self._conn.execute("INSERT INTO fm_var_entries SELECT id, name, type, size_bytes, summary,"
                          " value::JSON, restorable, reason, entry::JSON FROM fm_batch_entries")
                self._conn.unregister("fm_batch_entries")
            rows, states = [], {}
            for rec in recs:
                sid = state_id(rec.state) if rec.state is not None else None
                if sid is not None and sid not in self._states and sid not in states:
                    states[sid] = rec.state
                rows.append(self._step_params(rec, sid))
                self._step = max(self._step, rec.step)
            if states:
                self._conn.register("fm_batch_states", pa.Table.from_pylist(
                    [{"id": k, "names": v["names"], "ids": v["ids"]} for k, v in states.items()]))
                self._conn.execute("INSERT INTO fm_states SELECT id, names, ids FROM fm_batch_states")
                self._conn.unregister("fm_batch_states")
            cols = list(zip(*rows)) if rows else [[] for _ in range(18)]
            names = ["seq", "step", "branch", "parent", "kernel_id", "cell_id", "execution_count",
                     "code", "status", "started_at", "finished_at", "duration_ms", "error_name",
                     "error_value", "traceback", "outputs", "state_id", "changed"]
            types = {"seq": pa.int64(), "step": pa.int64(), "parent": pa.int64(),
                     "execution_count": pa.int32(), "duration_ms": pa.float64(),
                     "started_at": pa.timestamp("us", tz="UTC"),
                     "finished_at": pa.timestamp("us", tz="UTC"), "changed": pa.list_(pa.string())}
            table = pa.table({n: pa.array(list(col), type=types.get(n, pa.string()))
                              for n, col in zip(names, cols)})
            self._conn.register("fm_batch_steps", table)
            self._conn.execute(f"INSERT INTO fm_step_records ({', '.join(names)}) SELECT"
                      " seq, step, branch, parent, kernel_id, cell_id, execution_count, code, status,"
                      " started_at, finished_at, duration_ms, error_name, error_value,"
                      " traceback::JSON, outputs::JSON, state_id, changed FROM fm_batch_steps")
            self._conn.unregister("fm_batch_steps")
        self._states.update(states)

    def append_events(self, events: Sequence[tuple[str, int | None, str | None, dict | None]]) -> None:
        """Many events (kind, step, run_id, payload) in one transaction."""
        import pyarrow as pa

        now = utcnow()
        with self.transaction():
            table = pa.table({
                "seq": pa.array([self.next_seq() for _ in events], pa.int64()),
                "at": pa.array([now] * len(events), pa.timestamp("us", tz="UTC")),
                "kind": pa.array([e[0] for e in events], pa.string()),
                "step": pa.array([e[1] for e in events], pa.int64()),
                "run_id": pa.array([e[2] for e in events], pa.string()),
                "payload": pa.array([json.dumps(e[3] or {}, default=str) for e in events], pa.string()),
            })
            self._conn.register("fm_batch_events", table)
            self._conn.execute('INSERT INTO fm_events SELECT seq, "at", kind, step, run_id, payload::JSON'
                      " FROM fm_batch_events")
            self._conn.unregister("fm_batch_events")


def state_id(state: dict[str, Any]) -> str:
    import hashlib

    blob = "\x1f".join(state["names"]) + "\x1e" + "\x1f".join(state["ids"])
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
