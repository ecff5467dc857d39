"""The only module that talks to DuckDB: opening a history, its schema, and
every read and write of durable state, by method name.

One Store owns one read-write connection. DuckDB lets a single process hold
a database file, so while a kernel runs it is the only writer; step and
sequence numbers are therefore allocated here in memory from the maxima found
at open time, instead of by a round trip per cell.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb

from .. import errors
from ..errors import QueryFailed
from .migrations import MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class StepRecord:
    """One step as it stands at one moment (running, or its final form)."""

    step: int
    branch: str
    parent: int | None
    kernel_id: str
    cell_id: str | None
    execution_count: int | None
    code: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    duration_ms: float | None = None
    error_name: str | None = None
    error_value: str | None = None
    traceback: list[str] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] | None = None  # {"names": [...], "ids": [...], "changed": [...]}

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["started_at"] = self.started_at.isoformat()
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StepRecord":
        d = dict(d)
        d["started_at"] = dt.datetime.fromisoformat(d["started_at"])
        if d.get("finished_at"):
            d["finished_at"] = dt.datetime.fromisoformat(d["finished_at"])
        return cls(**d)


@dataclass
class Result:
    """A query result small enough to hold: column names and row tuples."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool = False  # user SQL: more rows than the cap were found

    def to_pandas(self):  # pandas is optional for the kernel itself
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


_STEP_INSERT = (
    "INSERT INTO fm_step_records (seq, step, branch, parent, kernel_id, cell_id, execution_count,"
    " code, status, started_at, finished_at, duration_ms, error_name, error_value, traceback,"
    " outputs, state_id, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Row counts of the history's tables, committed ones only. They only grow,
# so an unchanged list means views handed to user SQL earlier are current.
_VIEWS_KEY = ("SELECT list(estimated_size ORDER BY table_name) FROM duckdb_tables()"
              " WHERE starts_with(table_name, 'fm_')")
_ENTRY_COLUMNS = ("id", "name", "type", "size_bytes", "summary", "value", "restorable", "reason")


class Store:
    """A history database opened read-write by this process."""

    def __init__(self, path: Path, conn: duckdb.DuckDBPyConnection, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self.created = False  # set by open() when this process made the file
        self._conn = conn
        self._lock = threading.RLock()
        self._in_txn = False
        # Writers that buffer records outside DuckDB (the flow journal's log)
        # register a flush here, so a copy of the history holds them too.
        self.before_copy: list[Callable[[], None]] = []
        self._view_cache: dict[tuple, tuple[Any, Any, list[str]]] = {}  # views_as_arrow
        self._view_cols: dict[str, list[str]] = {}
        # DuckDB wakes its thread pool for every statement; for the small
        # writes on the per-cell path one thread is ~0.7 ms faster (bench/).
        # User SQL runs on its own instance with its own threads (run_isolated).
        self._conn.execute("SET threads = 1")
        self._migrate()
        # Appends go through their own cursor with the optimizer off: there is
        # nothing to optimise in INSERT ... VALUES, and planning it is ~0.4 ms
        # of a ~2 ms cell record. The setting is per connection; reads keep it.
        self._writer = self._conn.cursor()
        self._writer.execute("PRAGMA disable_optimizer")
        self._states = {r[0] for r in self._conn.execute("SELECT id FROM fm_states").fetchall()} \
            if not read_only else set()
        self._seq = self._scalar(
            "SELECT greatest((SELECT max(seq) FROM fm_step_records),"
            " (SELECT max(seq) FROM fm_events),"
            " (SELECT max(seq) FROM fm_branch_records),"
            " (SELECT max(seq) FROM fm_run_records),"
            " (SELECT max(seq) FROM fm_run_step_records))"
        ) or 0
        self._step = self._scalar("SELECT max(step) FROM fm_step_records") or 0

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, read_only: bool = False) -> "Store":
        """Open (creating if needed) the history at ``path`` for writing.

        Raises HistoryLocked when another live process holds it, and
        HistoryUnwritable when the file or its folder cannot be written.
        """
        path = Path(path)
        if read_only and not path.exists():
            raise errors.HistoryError(f"no history at {path}; run a cell in a flowmetal kernel first")
        try:
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise errors.HistoryUnwritable(path, exc) from None
        fresh = not path.exists()
        try:
            conn = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise errors.HistoryLocked(path, _lock_holder(str(exc))) from None
            raise errors.HistoryUnwritable(path, exc) from None
        except duckdb.Error as exc:
            raise errors.HistoryUnwritable(path, exc) from None
        if fresh:
            _owner_only(path)
        store = cls(path, conn, read_only)
        store.created = fresh and not read_only  # trust: only a new history gets our origin
        return store

    def _migrate(self) -> None:
        has_meta = self._scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'fm_meta'"
        )
        version = 0
        if has_meta:
            version = int(self._scalar("SELECT value FROM fm_meta WHERE key = 'schema_version'") or 0)
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise errors.SchemaTooNew(self.path, version, SCHEMA_VERSION)
        if self.read_only:
            if version < SCHEMA_VERSION:
                self._conn.close()
                raise errors.HistoryError(
                    f"history {self.path} has schema version {version}; open it once in a "
                    f"flowmetal kernel (or `fm log`) to upgrade it to {SCHEMA_VERSION}"
                )
            return
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction() as c:
                c.execute(MIGRATIONS[number - 1])
                c.execute(
                    "INSERT OR REPLACE INTO fm_meta VALUES ('schema_version', ?)", [str(number)]
                )
                if number == 1:
                    c.execute(
                        "INSERT INTO fm_branch_records VALUES (1, 'main', NULL, NULL, ?)",
                        [utcnow()],
                    )

    def close(self) -> None:
        with self._lock:
            try:
                self._writer.close()
                self._conn.close()
            except duckdb.Error:
                pass

    # -- low level -----------------------------------------------------------

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def transaction(self):
        """BEGIN ... COMMIT on the main connection, holding the store lock.
        Nested uses join the outer transaction; every append_* inside one
        goes into it."""
        store = self

        class _Txn:
            def __enter__(self_inner):
                store._lock.acquire()
                self_inner.outer = not store._in_txn
                if self_inner.outer:
                    store._conn.execute("BEGIN")
                    store._in_txn = True
                return store._conn

            def __exit__(self_inner, exc_type, exc, tb):
                try:
                    if self_inner.outer:
                        store._in_txn = False
                        store._conn.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    store._lock.release()
                return False

        return _Txn()

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def next_step(self) -> int:
        with self._lock:
            self._step += 1
            return self._step

    @property
    def last_step(self) -> int:
        return self._step

    # -- writes --------------------------------------------------------------

    def append_step(self, rec: StepRecord, entries: Sequence[dict[str, Any]] = ()) -> None:
        """Append one record of a step, and the variable entries its state
        names for the first time, in one transaction; committed on return."""
        with self._lock:
            self._step = max(self._step, rec.step)
            state_id = _state_id(rec.state) if rec.state is not None else None
            new_state = state_id is not None and state_id not in self._states
            if not entries and not new_state:
                conn = self._conn if self._in_txn else self._writer
                conn.execute(_STEP_INSERT, self._step_params(rec, state_id))
                return
            with self.transaction() as c:
                if entries:
                    rows, params = [], []
                    for e in entries:
                        rows.append("(?, ?, ?, ?, ?, ?, ?, ?, ?)")
                        params += [e["id"], e["name"], e["type"], e["size_bytes"], e["summary"],
                                   json.dumps(e["value"]) if e.get("value") is not None else None,
                                   e["restorable"], e["reason"], json.dumps(e)]
                    c.execute("INSERT INTO fm_var_entries VALUES " + ", ".join(rows), params)
                if new_state:
                    c.execute("INSERT INTO fm_states VALUES (?, ?, ?)",
                              [state_id, rec.state["names"], rec.state["ids"]])  # type: ignore[index]
                c.execute(_STEP_INSERT, self._step_params(rec, state_id))
            if new_state:
                self._states.add(state_id)  # type: ignore[arg-type]

    def append_steps(self, recs: Sequence[StepRecord],
                     entries: Sequence[dict[str, Any]] = ()) -> None:
        """Many step records in one transaction, columnar (imports, bulk
        builds): the per-row path costs a statement per record."""
        import pyarrow as pa

        with self.transaction() as c:
            if entries:
                c.register("fm_batch_entries", pa.Table.from_pylist([
                    {"id": e["id"], "name": e["name"], "type": e["type"],
                     "size_bytes": e["size_bytes"], "summary": e["summary"],
                     "value": json.dumps(e["value"]) if e.get("value") is not None else None,
                     "restorable": e["restorable"], "reason": e["reason"], "entry": json.dumps(e)}
                    for e in entries]))
                c.execute("INSERT INTO fm_var_entries SELECT id, name, type, size_bytes, summary,"
                          " value::JSON, restorable, reason, entry::JSON FROM fm_batch_entries")
                c.unregister("fm_batch_entries")
            rows, states = [], {}
            for rec in recs:
                sid = _state_id(rec.state) if rec.state is not None else None
                if sid is not None and sid not in self._states and sid not in states:
                    states[sid] = rec.state
                rows.append(self._step_params(rec, sid))
                self._step = max(self._step, rec.step)
            if states:
                c.register("fm_batch_states", pa.Table.from_pylist(
                    [{"id": k, "names": v["names"], "ids": v["ids"]} for k, v in states.items()]))
                c.execute("INSERT INTO fm_states SELECT id, names, ids FROM fm_batch_states")
                c.unregister("fm_batch_states")
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
            c.register("fm_batch_steps", table)
            c.execute(f"INSERT INTO fm_step_records ({', '.join(names)}) SELECT"
                      " seq, step, branch, parent, kernel_id, cell_id, execution_count, code, status,"
                      " started_at, finished_at, duration_ms, error_name, error_value,"
                      " traceback::JSON, outputs::JSON, state_id, changed FROM fm_batch_steps")
            c.unregister("fm_batch_steps")
        self._states.update(states)

    def append_events(self, events: Sequence[tuple[str, int | None, str | None, dict | None]]) -> None:
        """Many events (kind, step, run_id, payload) in one transaction."""
        import pyarrow as pa

        now = utcnow()
        with self.transaction() as c:
            table = pa.table({
                "seq": pa.array([self.next_seq() for _ in events], pa.int64()),
                "at": pa.array([now] * len(events), pa.timestamp("us", tz="UTC")),
                "kind": pa.array([e[0] for e in events], pa.string()),
                "step": pa.array([e[1] for e in events], pa.int64()),
                "run_id": pa.array([e[2] for e in events], pa.string()),
                "payload": pa.array([json.dumps(e[3] or {}, default=str) for e in events], pa.string()),
            })
            c.register("fm_batch_events", table)
            c.execute('INSERT INTO fm_events SELECT seq, "at", kind, step, run_id, payload::JSON'
                      " FROM fm_batch_events")
            c.unregister("fm_batch_events")

    def _step_params(self, rec: StepRecord, state_id: str | None) -> list[Any]:
        return [
            self.next_seq(), rec.step, rec.branch, rec.parent, rec.kernel_id, rec.cell_id,
            rec.execution_count, rec.code, rec.status, rec.started_at, rec.finished_at,
            rec.duration_ms, rec.error_name, rec.error_value,
            json.dumps(rec.traceback) if rec.traceback is not None else None,
            json.dumps(rec.outputs), state_id,
            rec.state["changed"] if rec.state is not None else None,
        ]

    def append_event(
        self, kind: str, step: int | None = None, run_id: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> int:
        with self._lock:
            seq = self.next_seq()
            self._conn.execute(
                "INSERT INTO fm_events VALUES (?, ?, ?, ?, ?, ?)",
                [seq, utcnow(), kind, step, run_id, json.dumps(payload or {}, default=str)],
            )
            return seq

    # -- reads ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._lock:
            cur = self._conn.execute(sql, params)
            cols = [d[0] for d in cur.description] if cur.description else []
            return Result(cols, cur.fetchall() if cols else [])

    def views_as_arrow(self, names: Sequence[str], cancel: Any = None,
                       columns: set[str] | None = None) -> dict[str, tuple[Any, list[str]]]:
        """The named views as Arrow tables with the names of their JSON
        columns, for user SQL on its isolated instance (run_isolated), which
        never sees this connection. Only ``columns`` are copied when given
        (at least one per view). Read in one read-only snapshot on a cursor
        of its own, so cell recording does not wait for it; kept until a
        table's committed row count changes (they are append-only)."""
        with self._lock:
            cur = self._conn.cursor()
        try:
            if cancel is not None:
                cancel.attach(cur)
            # Read before the snapshot: a write landing in between makes the
            # key older than the data, so the next query reads again.
            key = cur.execute(_VIEWS_KEY).fetchall()[0]
            cur.execute("BEGIN TRANSACTION READ ONLY")
            out = {}
            for name in names:
                cols = self._view_columns(cur, name)
                wanted = [c for c in cols if columns is None or c.lower() in columns] or cols[:1]
                slot = (name, tuple(wanted))
                hit = self._view_cache.get(slot)
                if hit is None or hit[0] != key:
                    rel = cur.sql(f"SELECT {', '.join(_ident(c) for c in wanted)} FROM {_ident(name)}")
                    json_cols = [c for c, t in zip(rel.columns, rel.types) if str(t) == "JSON"]
                    hit = (key, rel.to_arrow_table(), json_cols)
                    if len(self._view_cache) >= 32:  # a few shapes per view; drop the oldest
                        self._view_cache.pop(next(iter(self._view_cache)))
                    self._view_cache[slot] = hit
                out[name] = (hit[1], hit[2])
            cur.execute("ROLLBACK")
            return out
        except duckdb.Error as exc:
            raise QueryFailed(_first_line(exc)) from None
        finally:
            if cancel is not None:
                cancel.detach()
            cur.close()

    def _view_columns(self, cur: duckdb.DuckDBPyConnection, name: str) -> list[str]:
        if name not in self._view_cols:
            self._view_cols[name] = list(cur.sql(f"SELECT * FROM {_ident(name)} LIMIT 0").columns)
        return self._view_cols[name]

    def steps(self, branch: str | None = None, limit: int | None = None) -> Result:
        """The step log (columns of ``STEP_LOG_COLUMNS``), oldest first."""
        return self.query(*step_log_query(branch, limit))

    def steps_frame(self, branch: str | None = None):
        """Every column of the steps view as a DataFrame, oldest first."""
        where, params = ("WHERE branch = ?", [branch]) if branch else ("", [])
        return self.query(f"SELECT * EXCLUDE (seq) FROM steps {where} ORDER BY step",
                          params).to_pandas()

    def step_count(self) -> int:
        return self._scalar("SELECT count(*) FROM steps")

    def pending_run_count(self) -> int:
        return self._scalar("SELECT count(*) FROM runs WHERE status IN ("
                            + ", ".join(f"'{s}'" for s in PENDING_RUN_STATUSES) + ")")

    def branches(self) -> Result:
        """name, head, base, created_at of every branch, oldest first."""
        return self.query("SELECT name, head, base, created_at FROM branches ORDER BY created_at, name")

    def session_steps(self, run_key: str) -> tuple[list[str], list[tuple]]:
        """The kernels that `fm run` started under ``run_key`` (oldest first)
        and their steps as (step, parent, code, status, kernel_id)."""
        kernels = [r[0] for r in self.query(
            "SELECT payload->>'kernel_id' FROM fm_events WHERE kind = 'kernel_started'"
            " AND payload->>'run_key' = ? ORDER BY seq", [run_key]).rows]
        if not kernels:
            return [], []
        rows = self.query(
            "SELECT step, parent, code, status, kernel_id FROM steps"
            " WHERE kernel_id IN (SELECT unnest(?::VARCHAR[]))", [kernels]).rows
        return kernels, rows

    def step(self, step: int) -> StepRecord | None:
        res = self.query(
            "SELECT step, branch, parent, kernel_id, cell_id, execution_count, code, status,"
            " started_at, finished_at, duration_ms, error_name, error_value,"
            " traceback::VARCHAR, outputs::VARCHAR, changed,"
            " (SELECT names FROM fm_states s WHERE s.id = r.state_id LIMIT 1),"
            " (SELECT ids FROM fm_states s WHERE s.id = r.state_id LIMIT 1)"
            " FROM fm_step_records r WHERE step = ? ORDER BY seq DESC LIMIT 1",
            [step],
        )
        if not res.rows:
            return None
        r = list(res.rows[0])
        changed, names, ids = r[15:18]
        r = r[:15]
        r[13] = json.loads(r[13]) if r[13] else None
        r[14] = json.loads(r[14]) if r[14] else []
        state = None if names is None else {"names": names, "ids": ids, "changed": changed or []}
        return StepRecord(*r, state=state)

    def entries(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Variable entries by id (as written by append_step)."""
        if not ids:
            return {}
        res = self.query(
            "SELECT id, any_value(entry)::VARCHAR FROM fm_var_entries"
            " WHERE id IN (SELECT unnest(?::VARCHAR[])) GROUP BY id", [list(ids)])
        return {i: json.loads(e) for i, e in res.rows}

    def known_entry_ids(self) -> set[str]:
        return {r[0] for r in self.query("SELECT DISTINCT id FROM fm_var_entries").rows}

    def append_branch(self, name: str, head: int | None, base: int | None) -> None:
        """A branch's creation, or a move of its head not made by running a cell."""
        with self._lock:
            self._conn.execute("INSERT INTO fm_branch_records VALUES (?, ?, ?, ?, ?)",
                               [self.next_seq(), name, head, base, utcnow()])

    def head(self, before_seq: int | None = None) -> tuple[str, int | None] | None:
        """HEAD (branch, step) before ``before_seq``: the later, in seq order, of
        the last cell's final record and the last HEAD-move event. A killed
        cell's record (written by the next kernel) has no finished_at: it
        never moved HEAD. None before anything did."""
        res = self.query(
            "SELECT branch, step FROM ("
            "  SELECT seq, branch, step FROM fm_step_records WHERE finished_at IS NOT NULL"
            "  UNION ALL"
            "  SELECT seq, payload->>'branch', step FROM fm_events"
            "  WHERE kind IN ('rewind', 'checkout', 'resume', 'fork')"
            ") WHERE seq < ? ORDER BY seq DESC LIMIT 1", [before_seq or (1 << 62)])
        return (res.rows[0][0], res.rows[0][1]) if res.rows else None

    def copy_to(self, target: Path) -> None:
        """A consistent copy of the whole history as a new database file."""
        for flush in list(self.before_copy):
            flush()
        with self._lock:
            db = self._scalar("SELECT current_database()")
            self._conn.execute("CHECKPOINT")
            self._conn.execute(f"ATTACH '{_sql_str(target)}' AS fm_copy")
            try:
                self._conn.execute(f'COPY FROM DATABASE "{db}" TO fm_copy')
            finally:
                self._conn.execute("DETACH fm_copy")

    def meta(self, key: str) -> str | None:
        return self._scalar("SELECT value FROM fm_meta WHERE key = ?", [key])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO fm_meta VALUES (?, ?)", [key, value])

    def delete_meta(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM fm_meta WHERE key = ?", [key])

    def unfinished_steps(self) -> list[StepRecord]:
        """Steps whose latest record says 'running': their kernel died."""
        res = self.query("SELECT step FROM steps WHERE status = 'running' ORDER BY step")
        return [rec for (n,) in res.rows if (rec := self.step(n)) is not None]

    def branch_heads(self) -> dict[str, int | None]:
        return dict(self.query("SELECT name, head FROM branches").rows)

    def last_event(self, kinds: Sequence[str]) -> dict[str, Any] | None:
        marks = ", ".join("?" for _ in kinds)
        res = self.query(
            f"SELECT seq, kind, step, payload FROM fm_events WHERE kind IN ({marks})"
            " ORDER BY seq DESC LIMIT 1",
            list(kinds),
        )
        return res.dicts()[0] if res.rows else None

    def size_bytes(self) -> int:
        total = 0
        for p in (self.path, Path(str(self.path) + ".wal")):
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def iter_rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]:
        yield from self.query(sql, params).rows


def _lock_holder(message: str) -> str | None:
    # DuckDB says: "... Conflicting lock is held in <exe> (PID 1234) by user ..."
    marker = "(PID "
    i = message.find(marker)
    if i < 0:
        return None
    return message[i + len(marker):].split(")", 1)[0].strip()


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


# -- user SQL's own instance --------------------------------------------------
# User SQL never runs on a history's connection. It runs on a cursor of a
# separate in-memory instance made with external access off (no file, ATTACH,
# COPY or extension loading) and its configuration locked (no SET, RESET or
# PRAGMA can change a setting), inside a read-only transaction. It holds no
# data of its own: the kernel hands it the views a query names as Arrow
# tables (Store.views_as_arrow) and each past DataFrame `frame()` names as an
# Arrow table, so a query sees what it was given and nothing else, whatever
# the parser check (record/querying.py) might miss.
_ISOLATED_CONFIG = {
    "enable_external_access": False, "autoload_known_extensions": False,
    "autoinstall_known_extensions": False, "allow_community_extensions": False,
    "allow_unsigned_extensions": False, "threads": 2, "memory_limit": "1GB",
    "lock_configuration": True,
}
_isolated: duckdb.DuckDBPyConnection | None = None
_isolated_lock = threading.Lock()


def _isolated_cursor() -> duckdb.DuckDBPyConnection:
    global _isolated
    with _isolated_lock:
        if _isolated is None:
            _isolated = duckdb.connect(":memory:", config=dict(_ISOLATED_CONFIG))
        return _isolated.cursor()


def run_isolated(sql: str, params: Sequence[Any], views: dict[str, tuple[Any, list[str]]],
                 frames: dict[str, Any], max_rows: int | None, cancel: Any) -> Result:
    """Run one checked user query on a fresh cursor of the isolated instance.
    ``views``: view name -> (Arrow table, its JSON columns); ``frames``:
    table name -> Arrow table; ``cancel.attach(cursor)`` lets a timer, an
    interrupt or a gone client stop it. Raises QueryFailed."""
    cur = _isolated_cursor()
    try:
        for name, (table, json_cols) in views.items():
            cur.register(f"fm_arrow_{name}", table)
            # Arrow carries JSON as text; give the views back their JSON type.
            casts = ", ".join(f'"{c}"::JSON AS "{c}"' for c in json_cols)
            cur.execute(f'CREATE TEMP VIEW "{name}" AS SELECT *'
                        f'{f" REPLACE ({casts})" if casts else ""} FROM fm_arrow_{name}')
        for name, table in frames.items():
            cur.register(name, table)
        cur.execute("BEGIN TRANSACTION READ ONLY")
        cancel.attach(cur)
        try:
            cur.execute(sql, list(params))
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = [] if not cols else cur.fetchall() if max_rows is None \
                else cur.fetchmany(max_rows + 1)
        except (duckdb.Error, RuntimeError) as exc:  # Ctrl-C arrives as RuntimeError
            interrupted = isinstance(exc, duckdb.InterruptException) or "interrupted" in str(exc)
            raise QueryFailed("interrupted" if interrupted else _first_line(exc),
                              wrote="read-only" in str(exc)) from None
        finally:
            cancel.detach()
        cut = max_rows is not None and len(rows) > max_rows
        return Result(cols, rows[:max_rows] if cut else rows, truncated=cut)
    finally:
        cur.close()


def statement_types(sql: str) -> list[str]:
    """The statement types DuckDB parses ``sql`` into (SELECT, INSERT, ...)."""
    try:
        return [st.type.name for st in duckdb.extract_statements(sql)]
    except duckdb.Error as exc:
        raise QueryFailed(_first_line(exc)) from None


_parser: duckdb.DuckDBPyConnection | None = None  # in-memory, only parses
_parser_lock = threading.Lock()


def parse_tree(sql: str) -> Any:
    """DuckDB's own parse tree of a query (json_serialize_sql), or None when
    it cannot serialise it: it serialises nothing but SELECT."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config=dict(_ISOLATED_CONFIG))
        try:
            tree = json.loads(_parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        except duckdb.Error:
            return None
    return None if tree.get("error") else tree


def _state_id(state: dict[str, Any]) -> str:
    import hashlib

    blob = "\x1f".join(state["names"]) + "\x1e" + "\x1f".join(state["ids"])
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def _owner_only(path: Path) -> None:
    for p in (path, Path(str(path) + ".wal")):
        try:
            p.chmod(0o600)
        except OSError:
            pass


# -- named queries over the public views ------------------------------------------------
# Plain SELECTs over the spec's views, so that the CLI can also send them to a
# live kernel's endpoint as user SQL (the read-only door) when it holds the file.

PENDING_RUN_STATUSES = ("running", "sleeping", "waiting")
STEP_LOG_COLUMNS = ("step", "branch", "parent", "status", "execution_count", "duration_ms",
                    "started_at", "code", "error_name")


def step_log_query(branch: str | None = None, limit: int | None = None) -> tuple[str, list[Any]]:
    """The last ``limit`` steps (of ``branch``), oldest first."""
    where, params = ("WHERE branch = ?", [branch]) if branch else ("", [])
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return (f"SELECT * FROM (SELECT {', '.join(STEP_LOG_COLUMNS)} FROM steps {where}"
            f" ORDER BY step DESC{limit_sql}) ORDER BY step", params)


def runs_query(limit: int) -> str:
    return ("SELECT run_id, flow, status, started_at, finished_at FROM runs"
            f" ORDER BY started_at DESC LIMIT {int(limit)}")
