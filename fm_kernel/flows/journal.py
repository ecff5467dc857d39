"""Persistence of flow runs and their journals (spec: "Flow run", views
``runs`` and ``run_steps``). All SQL over the run tables lives here.

Why a log file beside the database: a DuckDB commit costs 1-3 ms on the
machines we measured (docs/bench-flows.md), and a flow must not move past a
step before its result is durable. So a journal record is first appended to
``<history>.flowlog`` (one ``write(2)`` of a JSON line: it survives the death
of the process the moment the call returns; set ``FM_FLOW_FSYNC=1`` to also
``fdatasync`` it, surviving power loss), and a checkpointer thread moves the
records into DuckDB in batches, many rows per transaction. The log is
DuckDB's own write-ahead-log idea one level up: a kernel that opens the
history replays the records the last checkpoint did not reach, then empties
the log. Records carry a log sequence number (LSN); the highest one
checkpointed is kept in ``fm_meta`` in the same transaction as the rows, so a
record is inserted exactly once however the process dies.

Signals and callback deliveries are written to DuckDB directly (they are
rare and the HTTP client is told "stored" only once they are committed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import RunFinished
from ..record import changes
from ..record.objects import ObjectFiles
from ..record.steplog import fsync_wanted
from ..record.store import Store
from .values import JournalValues

log = logging.getLogger(__name__)

LOG_SUFFIX = ".flowlog"
# Records are durable in the log at once; DuckDB gets them this often
# (seconds), or at once when 2,000 are waiting, a run finishes or a map
# returns. Each checkpoint costs several ms of CPU whatever its size: at 50 ms
# a fan-out of 200 steps spent 0.75 s of kernel CPU on them, at 0.5 s 0.08 s.
CHECKPOINT_INTERVAL = 0.5
# A run in one of these has not finished: a kernel opening the history resumes it.
PENDING_STATUSES = ("running", "sleeping", "waiting")
# A run waiting in an fm.Queue (queues.py) has not started: its queue starts it.
ENQUEUED = "enqueued"
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
_LSN_KEY = "flow_log_lsn"

RUN_COLS = ("run_id", "flow", "status", "args", "result", "error", "started_at", "finished_at",
            "forked_from_run", "forked_from_step", "parent_run", "parent_position", "deadline",
            "queue", "enqueued_at", "priority")
STEP_COLS = ("run_id", "position", "name", "status", "attempt", "started_at", "finished_at",
             "duration_ms", "result", "error", "detail")
EVENT_COLS = ("at", "kind", "run_id", "payload")
_TIME_COLS = {"started_at", "finished_at", "deadline", "enqueued_at"}
_TYPES = {"started_at": "TIME", "finished_at": "TIME", "deadline": "TIME", "enqueued_at": "TIME",
          "at": "TIME", "position": "INTEGER", "priority": "INTEGER",
          "attempt": "INTEGER", "forked_from_step": "INTEGER", "parent_position": "INTEGER",
          "duration_ms": "DOUBLE",
          "args": "JSON", "result": "JSON", "error": "JSON", "detail": "JSON", "payload": "JSON"}


# -- values ------------------------------------------------------------------

class _Collecting:
    """Journal.collecting (a class, not a generator: it is used twice a task)."""

    def __init__(self, held: threading.local):
        self.held = held

    def __enter__(self) -> list[tuple[str, dict[str, Any]]]:
        if getattr(self.held, "records", None) is not None:
            raise RuntimeError("journal.collecting() does not nest")
        self.held.records = []
        return self.held.records

    def __exit__(self, *exc: Any) -> None:
        self.held.records = None


class Journal(JournalValues):
    """The run tables of one history, with their log and checkpointer."""

    def __init__(self, store: Store, checkpoint_interval: float = CHECKPOINT_INTERVAL):
        self.store = store
        self.fsync = fsync_wanted()  # FM_FSYNC=1 (or the older FM_FLOW_FSYNC=1)
        self._objects: ObjectFiles | None = None
        self.log_path = store.sidecar(LOG_SUFFIX)
        self._lock = threading.Lock()          # the log fd, _pending, _lsn
        self._ckpt_lock = threading.Lock()     # one checkpoint at a time
        self._pending: list[tuple[int, str, dict[str, Any]]] = []
        self._wake = threading.Event()
        self._after: list[Callable[[], None]] = []  # when_flushed callbacks, oldest first
        self._closed = False
        self._held = threading.local()  # collecting(): this thread's records, not yet written
        self.interval = checkpoint_interval
        self._lsn = self._recover()
        self._fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._thread = threading.Thread(target=self._checkpointer, name="fm-flow-journal",
                                        daemon=True)
        self._thread.start()
        store.before_copy.append(self.flush)  # an export holds every acknowledged record

    def append(self, kind: str, row: dict[str, Any]) -> None:
        """Make one record durable (see the module doc); DuckDB gets it at the
        next checkpoint. ``kind``: 'run', 'step' or 'event'."""
        self.append_many([(kind, row)])

    def append_many(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Make several records durable with one write(2) (a claim of many
        tasks): a kill cuts the write at a line at worst, and a torn last
        line was never acknowledged (recovery drops it)."""
        held = getattr(self._held, "records", None)
        if held is not None:
            held.extend(records)
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the flow journal is closed (the kernel is shutting down)")
            first = self._lsn + 1
            self._lsn += len(records)
            text = "".join(json.dumps({"lsn": lsn, "k": kind, "r": row}, default=str) + "\n"
                           for lsn, (kind, row) in enumerate(records, first))
            data = memoryview(text.encode())
            while data:
                data = data[os.write(self._fd, data):]
            if self.fsync:
                os.fdatasync(self._fd)
            self._pending.extend((lsn, kind, row) for lsn, (kind, row) in enumerate(records, first))
            if len(self._pending) >= 2000:
                self._wake.set()
        changes.notify("flow")  # open run views show it (widgets/hub.py)

    def collecting(self) -> "_Collecting":
        """``with journal.collecting() as held:`` within the block, this
        thread's records are collected in the list ``held`` instead of
        written: the caller writes them with its own, in one write (an
        fm.task step's waiting record and status go with its task_queued
        event: tasks.py). Nothing in the block may tell anyone of them: they
        are not durable until that write."""
        return _Collecting(self._held)

    def event(self, kind: str, run_id: str | None, payload: dict[str, Any]) -> None:
        self.events([(kind, run_id, payload)])

    def events(self, events: list[tuple[str, str | None, dict[str, Any]]],
               also: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        """Events (kind, run_id, payload) made durable with one write, and
        the records ``also`` (kind, row) after them in the same write."""
        at = time.time()
        self.append_many([("event", {"kind": kind, "run_id": run_id, "payload": payload, "at": at})
                          for kind, run_id, payload in events] + (also or []))

    def flush(self) -> None:
        """Checkpoint now: on return every record appended so far is in DuckDB.
        Flushes that come together share one checkpoint (group commit): one
        waiting for the lock finds its records inserted by the one before it
        and returns, so many runs ending at once cost a few DuckDB commits,
        not one each."""
        with self._lock:
            target = self._lsn
        with self._ckpt_lock:  # (none in progress: what is not pending is inserted)
            with self._lock:
                if not self._pending or self._pending[0][0] > target:
                    return
        self.checkpoint()

    def when_flushed(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the checkpointer thread once every record appended
        so far is in DuckDB: how many runs ending at once share one commit
        without each holding a thread until it is done."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._after.append(fn)
        if closed:
            fn()
        self._wake.set()

    def _checkpointer(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:  # those registered now: their records are pending or inserted
                after, self._after = self._after, []
            try:
                self.checkpoint()
            except Exception:  # the records stay pending; the next round retries
                with self._lock:
                    self._after[:0] = after
                log.exception("flow journal checkpoint into %s failed; retrying in %.1fs",
                              self.store.path, self.interval)
                continue
            self._call(after)

    @staticmethod
    def _call(after: list[Callable[[], None]]) -> None:
        for fn in after:
            try:
                fn()
            except Exception:
                log.exception("a callback after a flow journal checkpoint failed")

    def checkpoint(self) -> None:
        with self._ckpt_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                try:
                    self._insert(batch)
                except BaseException:
                    with self._lock:
                        self._pending[:0] = batch
                    raise
            with self._lock:
                # Everything written to the file is in _pending until inserted,
                # so an empty _pending means the whole log is in DuckDB.
                if not self._pending and not self._closed:
                    os.ftruncate(self._fd, 0)

    def _insert(self, batch: list[tuple[int, str, dict[str, Any]]]) -> None:
        # One statement per table whatever the batch size: each column goes
        # in as one list parameter and is unnested (~50,000 rows/s here).
        # Not pyarrow: importing it (and numpy) on this thread while the
        # kernel pickles the namespace on the main thread breaks that pickling.
        by_kind: dict[str, list[dict[str, Any]]] = {"run": [], "step": [], "event": []}
        for _lsn, kind, row in batch:
            by_kind[kind].append(row)
        with self.store.transaction():
            # seqs are taken here, in log order, so "latest by seq" in the
            # views is the order the flow wrote its records in.
            for kind, table, cols in (("run", "fm_run_records", RUN_COLS),
                                      ("step", "fm_run_step_records", STEP_COLS),
                                      ("event", "fm_events", EVENT_COLS)):
                rows = by_kind[kind]
                if not rows:
                    continue
                params: list[list[Any]] = [[self.store.next_seq() for _ in rows]]
                exprs = ["unnest(?::BIGINT[])"]
                for col in cols:
                    vals = [r.get(col) for r in rows]
                    typ = _TYPES.get(col, "VARCHAR")
                    if typ == "VARCHAR" or typ == "JSON":
                        vals = [v if v is None or isinstance(v, str) else json.dumps(v, default=str)
                                for v in vals]
                    params.append(vals)
                    if typ == "TIME":
                        exprs.append("to_timestamp(unnest(?::DOUBLE[]))")
                    elif typ == "JSON":
                        exprs.append("unnest(?::VARCHAR[])::JSON")
                    else:
                        exprs.append(f"unnest(?::{typ}[])")
                names = ", ".join('"at"' if col == "at" else col for col in ("seq", *cols))
                self.store.execute(f"INSERT INTO {table} ({names}) SELECT {', '.join(exprs)}", params)
            self.store.set_meta(_LSN_KEY, str(batch[-1][0]))

    def _recover(self) -> int:
        """Insert the log records a dead process did not checkpoint."""
        rows = self.store.query("SELECT value FROM fm_meta WHERE key = ?", [_LSN_KEY]).rows
        done = int(rows[0][0]) if rows else 0
        batch, last = [], done
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line torn by the crash: its write never returned
                continue
            last = max(last, rec["lsn"])
            if rec["lsn"] > done:
                batch.append((rec["lsn"], rec["k"], rec["r"]))
        if batch:
            self._insert(batch)
        if text:
            os.truncate(self.log_path, 0)
        return last

    def close(self) -> None:
        if self._closed:
            return
        if self.flush in self.store.before_copy:
            self.store.before_copy.remove(self.flush)
        try:
            self.checkpoint()
        finally:
            with self._lock:
                self._closed = True
                os.close(self._fd)
                after, self._after = self._after, []
            self._wake.set()
            self._call(after)

    # -- reading (after a checkpoint, so DuckDB has everything) ----------------

    def run_row(self, run_id: str) -> dict[str, Any] | None:
        self.flush()
        res = self.store.query(
            f"SELECT {', '.join(RUN_COLS)} FROM runs WHERE run_id = ?", [run_id])
        return _epoch(res.dicts()[0]) if res.rows else None

    def step_rows(self, run_id: str) -> list[dict[str, Any]]:
        self.flush()
        res = self.store.query(
            f"SELECT {', '.join(STEP_COLS)} FROM fm_run_step_records WHERE run_id = ? ORDER BY seq",
            [run_id])
        return [_epoch(r) for r in res.dicts()]

    def pending_runs(self) -> list[dict[str, Any]]:
        self.flush()
        res = self.store.query(
            f"SELECT {', '.join(RUN_COLS)} FROM runs WHERE list_contains(?, status)"
            " ORDER BY started_at", [list(PENDING_STATUSES)])
        return [_epoch(r) for r in res.dicts()]

    def queue_rows(self, queue: str) -> list[dict[str, Any]]:
        """The runs of ``queue`` that are enqueued or have started and not
        finished (queues.py), oldest first."""
        self.flush()
        res = self.store.query(
            f"SELECT {', '.join(RUN_COLS)} FROM runs WHERE queue = ? AND list_contains(?, status)"
            " ORDER BY enqueued_at", [queue, [ENQUEUED, *PENDING_STATUSES]])
        return [_epoch(r) for r in res.dicts()]

    def queue_starts(self, queue: str, since: float) -> list[float]:
        """When the runs of ``queue`` started since ``since`` (epoch seconds):
        what a rate limit counts after a restart."""
        self.flush()
        res = self.store.query(
            "SELECT epoch(started_at) FROM runs WHERE queue = ? AND started_at >= to_timestamp(?)"
            " ORDER BY started_at", [queue, since])
        return [r[0] for r in res.rows]

    def pending_children(self, run_id: str) -> list[dict[str, Any]]:
        """The runs ``run_id`` started from its body (child runs) that have not finished."""
        self.flush()
        res = self.store.query(
            f"SELECT {', '.join(RUN_COLS)} FROM runs WHERE parent_run = ?"
            " AND list_contains(?, status) ORDER BY started_at",
            [run_id, [ENQUEUED, *PENDING_STATUSES]])
        return [_epoch(r) for r in res.dicts()]

    def runs(self, limit: int | None = None):
        self.flush()
        sql = "SELECT * FROM runs ORDER BY coalesce(started_at, enqueued_at) DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self.store.query(sql)

    def listing(self, limit: int, status: str | None = None, flow: str | None = None,
                failed: bool = False) -> Any:
        """The runs as `fm runs` lists them (record/rows.py RUNS_SQL)."""
        from ..record.rows import runs_query

        self.flush()
        return self.store.query(*runs_query(limit, status, flow, failed))

    def find_runs(self, flow: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Runs newest first, optionally of one flow and/or status (GET /runs)."""
        self.flush()
        res = self.store.query(
            "SELECT run_id, flow, status, epoch(started_at) AS started_at,"
            " epoch(finished_at) AS finished_at, parent_run FROM runs"
            " WHERE (?::VARCHAR IS NULL OR flow = ?) AND (?::VARCHAR IS NULL OR status = ?)"
            " ORDER BY coalesce(runs.started_at, runs.enqueued_at) DESC LIMIT ?",
            [flow, flow, status, status, limit])
        return res.dicts()

    # -- external events -----------------------------------------------------

    def add_signal(self, run_id: str, name: str, data: Any, key: str | None = None) -> int:
        """Store a signal; with ``key`` (a sending run's "run_id:position"),
        once: a signal already stored under that key is not stored again."""
        if key is None:
            seq = self.store.append_event("signal", run_id=run_id, payload={"name": name, "data": data})
        else:
            with self.store.transaction():
                res = self.store.query("SELECT seq FROM fm_events WHERE kind = 'signal'"
                                       " AND payload->>'key' = ? LIMIT 1", [key])
                if res.rows:
                    return res.rows[0][0]
                seq = self.store.append_event("signal", run_id=run_id,
                                              payload={"name": name, "data": data, "key": key})
        changes.notify("flow")  # a signal from outside (fm signal) shows in open run views
        return seq

    def signals(self, run_id: str, name: str) -> list[tuple[int, Any]]:
        res = self.store.query(
            "SELECT seq, payload->'data' FROM fm_events WHERE kind = 'signal' AND run_id = ?"
            " AND payload->>'name' = ? ORDER BY seq", [run_id, name])
        return [(s, json.loads(d) if d is not None else None) for s, d in res.rows]

    def run_event(self, run_id: str, key: str) -> str | None:
        """The JSON text of the latest value run ``run_id`` set for ``key``
        (fm.set_event journals it as an ``ok`` step named
        ``fm.set_event(<key>)``), or None if it set none."""
        self.flush()
        res = self.store.query(
            "SELECT result FROM fm_run_step_records WHERE run_id = ? AND name = ? AND status = 'ok'"
            " ORDER BY position DESC, seq DESC LIMIT 1", [run_id, f"fm.set_event({key})"])
        if not res.rows:
            return None
        v = res.rows[0][0]
        return v if v is None or isinstance(v, str) else json.dumps(v)

    def callback_run(self, cb_id: str) -> str | None:
        self.flush()
        res = self.store.query(
            "SELECT run_id FROM fm_run_step_records WHERE name = 'fm.callback' AND status = 'ok'"
            " AND result->>'id' = ? LIMIT 1", [cb_id])
        return res.rows[0][0] if res.rows else None

    def add_callback(self, cb_id: str, run_id: str, data: Any) -> int | None:
        """Store the first delivery of a callback; None if it was resolved already."""
        with self.store.transaction():
            if self.callback_events(cb_id):
                return None
            return self.store.append_event("callback", run_id=run_id,
                                           payload={"callback_id": cb_id, "data": data})

    def callback_events(self, cb_id: str) -> list[tuple[int, Any]]:
        res = self.store.query(
            "SELECT seq, payload->'data' FROM fm_events WHERE kind = 'callback'"
            " AND payload->>'callback_id' = ? ORDER BY seq", [cb_id])
        return [(s, json.loads(d) if d is not None else None) for s, d in res.rows]

    # -- schedules -------------------------------------------------------------

    def last_slot(self, flow: str) -> float | None:
        res = self.store.query(
            "SELECT max(CAST(payload->>'slot' AS DOUBLE)) FROM fm_events"
            " WHERE kind = 'flow_scheduled' AND payload->>'flow' = ?", [flow])
        return res.rows[0][0] if res.rows else None

    def record_slot(self, flow: str, slot: float, run_id: str | None) -> None:
        self.store.append_event("flow_scheduled", run_id=run_id, payload={"flow": flow, "slot": slot})


def signal_offline(store: Store, run_id: str, name: str, data: Any = None) -> int:
    """Store a signal for a run while no kernel holds the history (``fm
    signal``); the run's wait takes it when a kernel resumes the run. A
    finished run is refused, as in a kernel: nothing would ever take it."""
    status = store.query("SELECT status FROM runs WHERE run_id = ? LIMIT 1", [run_id]).rows
    if status and status[0][0] in FINISHED_STATUSES:
        raise RunFinished(run_id, status[0][0], f"signal {name!r}")
    known = store.query("SELECT 1 FROM fm_run_records WHERE run_id = ? LIMIT 1", [run_id]).rows
    if not known:
        log = Path(str(store.path) + LOG_SUFFIX)
        if not (log.exists() and run_id.encode() in log.read_bytes()):
            raise KeyError(f"no flow run {run_id!r} in {store.path}; `fm runs` lists them")
    return store.append_event("signal", run_id=run_id, payload={"name": name, "data": data})


def _epoch(row: dict[str, Any]) -> dict[str, Any]:
    for col in _TIME_COLS:
        if isinstance(row.get(col), dt.datetime):
            row[col] = row[col].timestamp()
    for col in ("result", "error", "args", "detail"):
        v = row.get(col)
        if v is not None and not isinstance(v, str):
            row[col] = json.dumps(v)
    if isinstance(row.get("detail"), str):
        row["detail"] = json.loads(row["detail"])
    return row
