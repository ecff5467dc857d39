"""Columnar writes of many records in one transaction (imports, bulk builds,
batches of events): a mixin of Store, through its connection and its
transaction, because the per-row path costs a statement per record."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Sequence

from .rows import StepRecord, utcnow
from .stored_states import COLUMNS as STATE_COLS, StateChain


_STEP_COLS = ("seq", "step", "branch", "parent", "kernel_id", "cell_id", "execution_count", "code",
              "status", "started_at", "finished_at", "duration_ms", "error_name", "error_value",
              "traceback", "outputs", "state_id", "changed")
_ENTRY_COLS = ("id", "name", "type", "size_bytes", "summary", "value", "restorable", "reason",
               "entry")
_JSON_COLS = {"traceback", "outputs", "value", "entry"}


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    return {"seq": pa.int64(), "step": pa.int64(), "parent": pa.int64(), "size_bytes": pa.int64(),
            "execution_count": pa.int32(), "duration_ms": pa.float64(), "restorable": pa.bool_(),
            "started_at": pa.timestamp("us", tz="UTC"), "finished_at": pa.timestamp("us", tz="UTC"),
            "changed": pa.list_(pa.string()), "names": pa.list_(pa.string()),
            "ids": pa.list_(pa.string()), "removed": pa.list_(pa.string())}.get(name)


def _iso(value: Any) -> str:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"not a column value: {type(value).__name__}")


class BulkWrites:
    _chain: StateChain | None = None  # how new states are stored (set at the first write)
    _col_types: dict[str, dict[str, str]]  # table -> column -> DuckDB type (set by Store)

    def _step_params(self, rec: StepRecord, state_id: str | None,
                     seq: int | None = None) -> list[Any]:
        return [
            self.next_seq() if seq is None else seq, rec.step, rec.branch, rec.parent,
            rec.kernel_id, rec.cell_id, rec.execution_count, rec.code, rec.status,
            rec.started_at, rec.finished_at,
            rec.duration_ms, rec.error_name, rec.error_value,
            json.dumps(rec.traceback) if rec.traceback is not None else None,
            json.dumps(rec.outputs), state_id,
            rec.state["changed"] if rec.state is not None else None,
        ]

    def append_steps(self, recs: Sequence[StepRecord], entries: Sequence[dict[str, Any]] = (),
                     seqs: Sequence[int] | None = None, columnar: bool = True,
                     hints: Sequence[dict[str, Any] | None] = ()) -> None:
        """Many step records in one transaction: columnar through Arrow
        (imports, bulk builds), or, for the step log's batches, as one JSON
        document per table (_json_rows): the checkpointer thread must not
        import pyarrow (and numpy with it) while a cell may be importing
        numpy itself. ``seqs`` are the
        records' sequence numbers when they were given out already. States
        go into fm_states whole or as changes (stored_states.py); ``hints``
        are the records' states as the step log wrote them (its changes)."""
        chain = self._chain if self._chain is not None else StateChain()
        with self.transaction():
            have = [i for i, rec in enumerate(recs) if rec.state is not None]
            sids, planned, link = chain.plan(
                [recs[i].state for i in have], [seqs[i] for i in have] if seqs else (),
                [hints[i] for i in have] if hints else ())
            new = {r[0]: r for r in planned if r is not None and r[0] not in self._states}
            sid_of = iter(sids)
            rows = [self._step_params(rec, next(sid_of) if rec.state is not None else None,
                                      None if seqs is None else seqs[i])
                    for i, rec in enumerate(recs)]
            with self._seq_lock:  # step numbers are handed out on other threads meanwhile
                self._step = max(self._step, *(rec.step for rec in recs), 0)
            entry_rows = [(e["id"], e["name"], e["type"], e["size_bytes"], e["summary"],
                           json.dumps(e["value"]) if e.get("value") is not None else None,
                           e["restorable"], e["reason"], json.dumps(e)) for e in entries]
            write = self._arrow_rows if columnar else self._json_rows
            write("fm_var_entries", _ENTRY_COLS, entry_rows)
            write("fm_states", STATE_COLS, list(new.values()))
            write("fm_step_records", _STEP_COLS, rows)
        chain.advance(link)
        self._chain = chain
        self._states.update(new)

    def _json_rows(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Rows as one JSON document, parsed by DuckDB: the step log's batches
        run beside cells, and bound VALUES converted each of ~1,000 values
        with the GIL held (~8 ms a batch of 30 cells); every GIL hand-over
        then cost a running cell up to the switch interval. One string
        binds in microseconds and DuckDB parses it with the GIL released."""
        if not rows:
            return
        types = self._column_types(table)
        shape = json.dumps([{c: "VARCHAR" if types[c] == "JSON" else types[c] for c in cols}])
        picked = ", ".join(f'r."{c}"::JSON' if types[c] == "JSON" else f'r."{c}"' for c in cols)
        doc = json.dumps([dict(zip(cols, r)) for r in rows], default=_iso)
        self._conn.execute(
            f"INSERT INTO {table} ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)}) "
            f"SELECT {picked} FROM (SELECT unnest(json_transform(?::JSON, '{shape}')) AS r)", [doc])

    def _column_types(self, table: str) -> dict[str, str]:
        if table not in self._col_types:
            self._col_types[table] = dict(self._conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = ? AND table_schema = 'main'", [table]).fetchall())
        return self._col_types[table]

    def _arrow_rows(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import pyarrow as pa

        if not rows:
            return
        data = pa.table({c: pa.array(list(col), type=_arrow_type(c) or pa.string())
                         for c, col in zip(cols, zip(*rows))})
        name = f"fm_batch_{table}"
        self._conn.register(name, data)
        try:
            exprs = [f"{c}::JSON" if c in _JSON_COLS else c for c in cols]
            self._conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(exprs)}"
                               f" FROM {name}")
        finally:
            self._conn.unregister(name)

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

