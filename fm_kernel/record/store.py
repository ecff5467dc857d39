"""The only module that talks to DuckDB: opening a history, its schema, and
every read and write of durable state, by method name.

One Store owns one read-write connection. DuckDB lets a single process hold
a database file, so while a kernel runs it is the only writer; step and
sequence numbers are therefore allocated here in memory from the maxima found
at open time, instead of by a round trip per cell.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb

from .. import errors
from ..errors import QueryFailed
from . import foreignwal, steplog, walcheck
from .migrations import MIGRATIONS
from .bulk import BulkWrites
from .connlock import ConnectionLock
from .reads import HistoryReads
from .refusals import (OS_REFUSALS, HistoryDamaged, first_line, lock_holder, named, owner_only,
                       refuse_foreign)
from .rows import Result, StepRecord, utcnow

SCHEMA_VERSION = len(MIGRATIONS)


# Row counts of the history's tables, committed ones only. They only grow,
# so an unchanged list means views handed to user SQL earlier are current.
_VIEWS_KEY = ("SELECT list(estimated_size ORDER BY table_name) FROM duckdb_tables()"
              " WHERE starts_with(table_name, 'fm_')")
_ENTRY_COLUMNS = ("id", "name", "type", "size_bytes", "summary", "value", "restorable", "reason")


class Store(BulkWrites, HistoryReads):
    """A history database opened read-write by this process."""

    def __init__(self, path: Path, conn: duckdb.DuckDBPyConnection, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self.created = False  # set by open() when this process made the file
        self._conn = conn
        self._lock = ConnectionLock()  # the connection
        self._seq_lock = threading.Lock()  # seq and step numbers, taken without the connection
        self._in_txn = False  # set and cleared holding _lock: its holder's transaction
        self._log: steplog.StepLog | None = None  # set once seq and step are known
        self._scratch: Path | None = None  # removed at close: an in-memory history's sidecars, a reader's copy
        # Writers that buffer records outside DuckDB (the step log, the flow
        # journal's log) register a flush here: copies and user SQL hold them.
        self.before_copy: list[Callable[[], None]] = []
        # Called before the step log's batch commits into DuckDB (synced):
        # what its records name must be durable first (objects.sync_packs).
        self.before_batch: list[Callable[[], None]] = []
        self._view_cache: dict[tuple, tuple[Any, Any, list[str]]] = {}  # views_as_arrow
        self._view_cols: dict[str, list[str]] = {}
        self._col_types: dict[str, dict[str, str]] = {}  # bulk.py's JSON batches
        # branch name -> head, kept current by this process's appends (reads.py)
        self._heads: dict[str, int | None] | None = None
        self._heads_version = 0  # bumped by every move, so a read racing one is not kept
        # DuckDB wakes its thread pool for every statement; for the small
        # writes of the step log's batches one thread is ~0.7 ms faster (bench/).
        # User SQL runs on its own instance with its own threads (run_isolated).
        self._conn.execute("SET threads = 1")
        self._migrate()
        self._states = {r[0] for r in self._conn.execute("SELECT id FROM fm_states").fetchall()} \
            if not read_only else set()
        self._step = 0
        # the log replays what a dead process left in it before seq and step are read
        log = steplog.StepLog(self) if not read_only else None
        self._seq = self._scalar(
            "SELECT greatest((SELECT max(seq) FROM fm_step_records),"
            " (SELECT max(seq) FROM fm_events),"
            " (SELECT max(seq) FROM fm_branch_records),"
            " (SELECT max(seq) FROM fm_run_records),"
            " (SELECT max(seq) FROM fm_run_step_records))"
        ) or 0
        self._step = self._scalar("SELECT max(step) FROM fm_step_records") or 0
        self._log = log
        if log is not None:
            self.before_copy.append(log.flush)

    # -- opening -------------------------------------------------------------
    handed_over: Any = None  # handover.HandedOver: `fm worker` handed it to this process

    @classmethod
    def open(cls, path: Path, read_only: bool = False) -> "Store":
        """Open (creating if needed) the history at ``path`` for writing.

        Raises HistoryLocked when another live process holds it, and
        HistoryUnwritable when the file or its folder cannot be written, or
        when one of its files is a link or another user's (never replayed).
        """
        path = Path(path)
        if read_only and not path.exists():
            raise errors.HistoryError(f"no history at {path}; run a cell in a flowmetal kernel first")
        if not read_only and str(path) != ":memory:":
            refuse_foreign(path)
        try:
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise errors.HistoryUnwritable(path, exc) from None
        fresh = not path.exists()
        if read_only and steplog.pending_tail(path):
            steplog.replay_for_reader(path, cls.open)
        found = None if read_only or fresh else walcheck.log_as_found(path)
        target, copy = foreignwal.reader_target(path) if read_only else (path, None)
        try:
            store = cls._connect(path, target, read_only, fresh, found)
        except BaseException:
            if copy is not None:
                shutil.rmtree(copy, ignore_errors=True)
            raise
        store._scratch = copy  # a reader's private copy goes at close
        acked = walcheck.acknowledged_step(path) if found else None
        if acked is not None and store.last_step < acked:
            store.abandon()  # DuckDB replayed its log only in part, and said nothing
            why = OSError(f"its write-ahead log replayed to step {store.last_step} of {acked}")
            raise HistoryDamaged(path, why, walcheck.keep_log(path, found))
        store.created = fresh and not read_only  # trust: only a new history gets our origin
        return store

    @classmethod
    def _connect(cls, path: Path, target: Path, read_only: bool, fresh: bool, found: Any) -> "Store":
        conn = None
        try:
            conn = duckdb.connect(str(target), read_only=read_only)
            if fresh:
                owner_only(path)
            return cls(path, conn, read_only)
        except duckdb.Error as exc:  # cannot open, or it opened but its tables cannot be read
            if conn is not None:
                conn.close()
            raise _open_failed(path, exc, fresh, found) from None

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
            with self.transaction():
                self._conn.execute(MIGRATIONS[number - 1])
                self._conn.execute(
                    "INSERT OR REPLACE INTO fm_meta VALUES ('schema_version', ?)", [str(number)]
                )
                if number == 1:
                    self._conn.execute(
                        "INSERT INTO fm_branch_records VALUES (1, 'main', NULL, NULL, ?)",
                        [utcnow()],
                    )

    def abandon(self) -> None:
        """Close without a checkpoint: the database file and its log stay as
        they were found (a damaged history is kept, never rewritten)."""
        with self._lock:
            with contextlib.suppress(duckdb.Error):
                self._conn.execute("PRAGMA disable_checkpoint_on_shutdown")
        if self._log is not None:
            self._log.abandon()
        self.close()

    def release_step(self, step: int) -> None:
        """Give back ``step`` when its record could not be written: numbers
        are reserved only by a committed record, so a failure leaves no gap."""
        with self._seq_lock:
            if self._step == step:
                self._step -= 1

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        with self._lock:
            try:
                self._conn.close()
            except duckdb.Error:
                pass
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)

    # -- low level -----------------------------------------------------------

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return row[0] if row else None

    @contextlib.contextmanager
    def transaction(self, log_first: bool = True) -> Iterator[None]:
        """BEGIN ... COMMIT on the main connection, holding the store lock.
        Nested uses join the outer transaction; every append_* (and execute)
        inside one goes into it. It hands out no connection: writes inside
        go through Store methods. The step log's waiting records go in first
        (``log_first``), so reads inside see them and none waits across it."""
        with self._lock:
            outer = not self._in_txn
            if outer and log_first and self._log is not None:
                self._log.flush()
            # A write transaction may change branches however it likes (an
            # import): the heads are read again after it. The step log's own
            # batches (log_first=False) hold records the heads already count.
            forget = outer and log_first
            if outer:
                self._forget_heads(forget)
                self._conn.execute("BEGIN")
                self._in_txn = True
            try:
                yield
            except BaseException:
                if outer:
                    self._in_txn = False
                    self._forget_heads(forget)
                    self._conn.execute("ROLLBACK")
                raise
            if outer:
                self._in_txn = False
                self._forget_heads(forget)
                self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write by a module that owns its tables (the flow journal's bulk
        inserts); inside a transaction() when it must be atomic with others."""
        with self._lock:
            self._conn.execute(sql, params)

    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def next_step(self) -> int:
        with self._seq_lock:
            self._step += 1
            return self._step

    @property
    def last_step(self) -> int:
        return self._step

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Hold the connection (re-entrant) across several calls that no
        other thread's may come between; yields True when this thread is
        already inside a transaction(), which whatever is written now joins,
        and leaves again if it rolls back."""
        with self._lock:
            yield self._in_txn

    def flush_writers(self) -> None:
        """The records buffered outside DuckDB (step log, flow log) into it. A
        thread holding the connection (in a transaction) flushes only the step
        log: the flow log's checkpoint waits for the connection (deadlock)."""
        if not self._lock.held_here():
            for flush in list(self.before_copy):
                flush()
        elif self._log is not None:
            self._log.flush()

    def _log_here(self) -> steplog.StepLog | None:
        """The step log, unless this thread is inside a transaction (its
        writes then go into that transaction, atomic with it). An open
        transaction holds the connection, so it is this thread's if held here."""
        if self._log is None or (self._in_txn and self._lock.held_here()):
            return None
        return self._log

    # -- writes --------------------------------------------------------------

    def append_step(self, rec: StepRecord, entries: Sequence[dict[str, Any]] = ()) -> None:
        """Append one record of a step, and the variable entries its state
        names for the first time; committed on return (to the step log)."""
        with self._seq_lock:
            self._step = max(self._step, rec.step)
        log = self._log_here()
        if log is not None:  # no wait for the connection: a batch may be going in
            log.append(self.next_seq(), rec, entries)  # committed on return
            self.head_moved(rec.branch, rec.step)
            return
        with self._lock:
            self.append_steps([rec], entries, columnar=False)

    def append_event(
        self, kind: str, step: int | None = None, run_id: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> int:
        seq = self.next_seq()
        row = [seq, utcnow(), kind, step, run_id, json.dumps(payload or {}, default=str)]
        log = self._log_here()
        if log is not None:
            log.append_row("events", row)
            return seq
        with self._lock:
            self._conn.execute("INSERT INTO fm_events VALUES (?, ?, ?, ?, ?, ?)", row)
        return seq

    # -- reads ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """A read over the history; every acknowledged record is in it."""
        self.flush_writers()
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
        self.flush_writers()
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
            raise QueryFailed(first_line(exc)) from None
        finally:
            if cancel is not None:
                cancel.detach()
            cur.close()

    def _view_columns(self, cur: duckdb.DuckDBPyConnection, name: str) -> list[str]:
        if name not in self._view_cols:
            self._view_cols[name] = list(cur.sql(f"SELECT * FROM {_ident(name)} LIMIT 0").columns)
        return self._view_cols[name]

    def append_branch(self, name: str, head: int | None, base: int | None) -> None:
        """A branch's creation, or a move of its head not made by running a cell."""
        row = [self.next_seq(), name, head, base, utcnow()]
        log = self._log_here()
        if log is not None:
            log.append_row("branches", row)
            self.head_moved(name, head, created=True)
            return
        with self._lock:
            self._conn.execute("INSERT INTO fm_branch_records VALUES (?, ?, ?, ?, ?)", row)

    def copy_to(self, target: Path) -> None:
        """A consistent copy of the whole history as a new database file."""
        self.flush_writers()
        with self._lock:
            db = self._scalar("SELECT current_database()")
            self._conn.execute("CHECKPOINT")
            self._conn.execute(f"ATTACH '{_sql_str(target)}' AS fm_copy")
            try:
                self._conn.execute(f'COPY FROM DATABASE "{db}" TO fm_copy')
            finally:
                self._conn.execute("DETACH fm_copy")

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM fm_meta WHERE key = ?", [key]).rows
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or, with None, delete) a setting of this history."""
        log = self._log_here()
        if log is not None:
            log.append_row("meta", [0, key, value])
            return
        with self._lock:
            if value is None:
                self._conn.execute("DELETE FROM fm_meta WHERE key = ?", [key])
            else:
                self._conn.execute("INSERT OR REPLACE INTO fm_meta VALUES (?, ?)", [key, value])

    def delete_meta(self, key: str) -> None:
        self.set_meta(key, None)

    def sidecar(self, suffix: str) -> Path:
        """The path of a file or folder that lives beside the database
        (``.objects``, ``.flowlog``). An in-memory history has no folder of
        its own: its sidecars go to a private temp folder, never to the
        working directory as ``:memory:.objects``."""
        if str(self.path) != ":memory:":
            return Path(str(self.path) + suffix)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="flowmetal-memory-"))  # 0700
        return self._scratch / f"history{suffix}"

    def size_bytes(self) -> int:
        total = 0
        for p in (self.path, Path(str(self.path) + ".wal")):
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

def _open_failed(path: Path, exc: duckdb.Error, fresh: bool, found: Any) -> Exception:
    if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
        return errors.HistoryLocked(path, lock_holder(str(exc)))
    if fresh or any(w in str(exc) for w in OS_REFUSALS):
        return errors.HistoryUnwritable(path, exc)
    return HistoryDamaged(path, named(exc), walcheck.keep_log(path, found))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


# -- other histories, read without opening them as a Store ---------------------------
# Looking into a neighbour history (which notebook ran this cell?) must neither
# migrate it nor take its lock for long: a read-only connection, one query.

def peek_count(history: Path, sql: str, params: Sequence[Any] = ()) -> int:
    """The integer ``sql`` returns over ``history`` opened read-only.
    Raises HistoryError when it cannot be read (held by a live kernel,
    not a history)."""
    with foreignwal.reading(history) as target:
        try:
            con = duckdb.connect(str(target), read_only=True)
        except duckdb.Error as exc:
            raise errors.HistoryError(first_line(exc)) from None
        try:
            return int(con.execute(sql, list(params)).fetchone()[0])
        except duckdb.Error as exc:
            raise errors.HistoryError(first_line(exc)) from None
        finally:
            con.close()


def readable(history: Path) -> str | None:
    """None if ``history`` opens read-only now, else DuckDB's reason."""
    try:
        with foreignwal.reading(history) as target:
            duckdb.connect(str(target), read_only=True).close()
    except duckdb.Error as exc:
        return first_line(exc)
    except errors.HistoryError as exc:
        return str(exc)
    return None


def copy_database(src: Path, target: Path) -> None:
    """A consistent copy of the database ``src`` (read-only) into a new ``target``."""
    with foreignwal.reading(src) as readable_src:
        _copy_from(readable_src, target)


def _copy_from(src: Path, target: Path) -> None:
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{_sql_str(src)}' AS fm_src (READ_ONLY)")
        con.execute(f"ATTACH '{_sql_str(target)}' AS fm_dst")
        con.execute("COPY FROM DATABASE fm_src TO fm_dst")
        con.execute("DETACH fm_dst")
    finally:
        con.close()
