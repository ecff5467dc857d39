"""The step log: a cell's record (and every event and branch record) is
committed by one append to ``<history>.steplog``, and moves into DuckDB in
batches behind it.

Why: a DuckDB commit costs about 1 ms here even for one small row (more on
a loaded disk), and it sat on the reply path of every cell. A ``write(2)``
of one JSON line costs microseconds and survives the death of the process
the moment it returns (the page cache outlives ``kill -9``); with
``FM_FSYNC=1`` each record is also ``fdatasync``-ed, surviving power loss.
Without it a power loss can take the records of the last checkpoint
interval (DuckDB's own commit of each batch is synced).

The log keeps its records until DuckDB checkpoints them into the database
file (every 16 MiB of log, and at close), so it is also a second source
when DuckDB's own write-ahead log replays short.

Every read of the history goes through ``Store.query`` or
``Store.views_as_arrow``, and both call :meth:`StepLog.flush` first, so a
read never misses an acknowledged record. A history opened after a crash
replays the log's lines whose ``seq`` DuckDB does not hold; a line torn by
the crash (no newline) was never acknowledged and is dropped.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import operator
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import HistoryError, HistoryLocked
from .objects import sync_folder
from .rows import StepRecord

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

SUFFIX = ".steplog"
# Records wait this long (seconds) for their batch, or until this many wait.
CHECKPOINT_INTERVAL = 0.25
CHECKPOINT_RECORDS = 500
OBJECTS = ".objects"  # the snapshot store's folder beside the history (state/states.py)
# The log is emptied (after a DuckDB CHECKPOINT) once it holds this much.
KEEP_BYTES = 16 << 20


def fsync_wanted() -> bool:
    """Power-loss durability per record: FM_FSYNC=1 (FM_FLOW_FSYNC=1 is the old name)."""
    return "1" in (os.environ.get("FM_FSYNC"), os.environ.get("FM_FLOW_FSYNC"))


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The whole records of a step log; a torn last line is left out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    out = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
        try:
            out.append(json.loads(line))
        except ValueError:
            log.warning("step log %s: a damaged line was skipped", path)
    return out


def pending_tail(path: Path) -> bool:
    """Whether a step log holds records (a process ended without its last checkpoint)."""
    try:
        return os.stat(str(path) + SUFFIX).st_size > 0
    except OSError:
        return False


def replay_for_reader(path: Path, open_writable: Callable[[Path], Any]) -> None:
    """Before a read-only open of a history a dead process left records for
    in its step log: replay them (a brief read-write open), so the reader
    sees every acknowledged step. Held by a live process: that one has them."""
    try:
        open_writable(path).close()
    except HistoryLocked:
        raise
    except HistoryError as exc:  # cannot be written: the reader gets what DuckDB has; say so
        log.warning("%s: records in its step log could not be replayed (%s)", path, exc)


class StepLog:
    """The step records of one Store not yet in DuckDB, and their file."""

    def __init__(self, store: "Store", interval: float | None = None):
        self.store = store
        self.path = store.sidecar(SUFFIX)
        self.fsync = fsync_wanted()
        self.interval = CHECKPOINT_INTERVAL if interval is None else interval
        self._pending: list[tuple] = []  # (seq, table, record or row, entries[, line's state])
        # Appends take only this lock, never the store's: a cell's record
        # must not wait while a batch is written into DuckDB.
        self._lock = threading.Lock()  # the fd, _size, _pending, _states
        self._wake = threading.Event()
        self._closed = False
        self._states = StateDeltas()  # the first state written by this process is whole
        self.replayed = self._replay()
        # never through a link planted at the log's name (location.py refuses those too)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                           0o600)
        self._size = os.fstat(self._fd).st_size
        if self._size > KEEP_BYTES:
            self._checkpoint()
        self._thread = threading.Thread(target=self._checkpointer, name="fm-step-log", daemon=True)
        self._thread.start()

    def _replay(self) -> int:
        """Insert the records a dead process left in the log; returns how many."""
        lines = read_lines(self.path)
        if not lines:
            return 0
        low = min((int(d["seq"]) for d in lines if d["seq"]), default=0)
        have = {r[0] for r in self.store.query(  # the store has no log yet: no flush
            "SELECT seq FROM fm_step_records WHERE seq >= $1 UNION ALL"
            " SELECT seq FROM fm_events WHERE seq >= $1 UNION ALL"
            " SELECT seq FROM fm_branch_records WHERE seq >= $1", [low]).rows}
        states = StateDeltas()  # decoded in file order, skipped lines included
        loaded = [_loaded(d, states) for d in lines]
        # settings (seq 0) are applied again in their order: the last one stands
        todo = [r for r in loaded if r is not None and (not r[0] or r[0] not in have)]
        if todo:
            # In the default mode the dead process synced its small objects
            # only before its batches (objects.py); the records replayed here
            # commit synced, so what they name goes to disk first.
            objects_dir = self.store.sidecar(OBJECTS)
            if objects_dir.is_dir():
                sync_folder(objects_dir)
            with self.store.transaction(log_first=False):
                _insert(self.store, todo)
            log.info("step log %s: %d record(s) replayed into the history", self.path, len(todo))
        return len(todo)

    # -- the commit path ----------------------------------------------------------

    def append(self, seq: int, rec: StepRecord, entries: Sequence[dict[str, Any]]) -> None:
        """Make a step record durable (one write) and queue it for DuckDB."""
        line = rec.to_json()
        with self._lock:
            if rec.state is not None:
                line["state"] = self._states.encode(rec.state)
            # the line's change is handed on: the batch stores the state from it
            self._write({"seq": seq, "table": "steps", "rec": line, "entries": list(entries)},
                        (seq, "steps", rec, entries, line.get("state")))
            if rec.state is not None:  # written: later deltas may refer to it
                self._states.base = (seq, rec.state["names"], rec.state["ids"])

    def append_row(self, table: str, row: list[Any]) -> None:
        """An event, branch record or setting (``table``: events, branches,
        meta); ``row`` holds the table's columns in order after its sequence
        number (0 for a setting: [0, key, value or None to delete])."""
        at = _AT.get(table)
        line = {"seq": row[0], "table": table,
                "row": row if at is None else [*row[:at], row[at].isoformat(), *row[at + 1:]]}
        with self._lock:
            self._write(line, (row[0], table, row, None))

    def _write(self, line: dict[str, Any], record: tuple) -> None:
        """One write of one line; the caller holds the log's lock. A write
        the disk refused is cut off again, so the log never holds half a
        record before a whole one."""
        data = (json.dumps(line) + "\n").encode()
        start = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fdatasync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                log.exception("step log %s: could not cut a refused record off", self.path)
            raise
        self._size = start + len(data)
        self._pending.append(record)
        if len(self._pending) == 1 or len(self._pending) >= CHECKPOINT_RECORDS:
            self._wake.set()

    def flush(self) -> None:
        """Move every waiting record into DuckDB now (one transaction).
        Called by reads, copies, close and the checkpointer."""
        with self.store.exclusive() as in_transaction:
            # a transaction flushed before it began; what other threads
            # append meanwhile waits for the next flush
            if not self._pending or in_transaction:
                return
            with self._lock:
                batch, self._pending = self._pending, []
            try:
                for before in list(self.store.before_batch):
                    before()
                with self.store.transaction(log_first=False):
                    _insert(self.store, batch)
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch
                raise
            if self._size > KEEP_BYTES:
                self._checkpoint()

    def _checkpoint(self) -> None:
        """DuckDB's CHECKPOINT, then an empty log, if nothing was appended
        meanwhile. Until then the log keeps every record DuckDB holds only in
        its write-ahead log: if that log replays short (a cut file), the
        records are replayed from here. The caller holds the store's lock."""
        self.store.execute("CHECKPOINT")
        with self._lock:
            if self._pending:
                return  # they are in the file only: it is emptied another time
            os.ftruncate(self._fd, 0)
            self._size = 0
            self._states.reset()  # the next state line is the file's first: whole

    def _checkpointer(self) -> None:
        while not self._closed:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            # let a burst of cells gather into one batch, unless it is large already
            if len(self._pending) < CHECKPOINT_RECORDS:
                threading.Event().wait(self.interval)
            try:
                self.flush()
            except Exception:  # the records stay in the log; reads and close try again
                log.exception("step log %s: checkpoint into DuckDB failed", self.path)
                threading.Event().wait(1.0)
                self._wake.set()

    def abandon(self) -> None:
        """Close leaving the file as it is, records and all (a damaged history)."""
        self._closed = True
        self._wake.set()
        with self._lock:
            os.close(self._fd)

    def close(self) -> bool:
        """Flush and close; True when everything reached DuckDB (the file is then removed)."""
        if self._closed:
            return not self._pending
        self._closed = True
        self._wake.set()
        try:
            self.flush()
            done = not self._pending
            if done:
                self.store.execute("CHECKPOINT")
        except Exception:
            log.exception("step log %s: records left for the next open to replay", self.path)
            done = False
        with self._lock:
            os.close(self._fd)
            if done and not self._pending:
                try:
                    self.path.unlink()
                except OSError:
                    pass
        return done


class StateDeltas:
    """A step record's state lists (every name and entry id: O(names)) as
    the change from the state of the step record before it in the same log
    file: with 10,000 names a cell that changed one writes one pair, not
    20,000 strings. The first record of a file is whole, and a delta names
    the line it applies to, so a damaged line in between is noticed."""

    def __init__(self) -> None:
        self.base: tuple[int, list[str], list[str]] | None = None  # seq, names, ids

    def encode(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` as a line holds it; the caller sets ``base`` once it is written."""
        names, ids = state["names"], state["ids"]
        if self.base is not None:
            bseq, bnames, bids = self.base
            k = len(bnames)
            if len(names) >= k and names[:k] == bnames:  # only names appended: the usual cell
                at = itertools.compress(range(k), map(operator.ne, ids[:k], bids))
                return {"base": bseq, "k": k, "set": [[i, ids[i]] for i in at],
                        "names": names[k:], "ids": ids[k:], "changed": state["changed"]}
        return state

    def decode(self, seq: int, state: dict[str, Any]) -> dict[str, Any] | None:
        if "base" in state:
            if self.base is None or self.base[0] != state["base"]:
                return None
            _, bnames, bids = self.base
            k = state["k"]
            ids = bids[:k]
            for i, v in state["set"]:
                ids[i] = v
            state = {"names": bnames[:k] + state["names"], "ids": ids + state["ids"],
                     "changed": state["changed"]}
        self.base = (seq, state["names"], state["ids"])
        return state

    def reset(self) -> None:
        self.base = None


# the position of the timestamp in an event's and a branch record's row
_AT = {"events": 1, "branches": 4}
_INSERT = {"events": "INSERT INTO fm_events VALUES ",
           "branches": "INSERT INTO fm_branch_records VALUES "}


def _loaded(d: dict[str, Any], states: StateDeltas) -> tuple | None:
    """A line of the log as the record it was appended as (None: its state
    cannot be rebuilt, because a line before it was damaged)."""
    table = d.get("table", "steps")
    if table == "steps":
        rec = dict(d["rec"])
        if rec.get("state") is not None:
            rec["state"] = states.decode(int(d["seq"]), rec["state"])
            if rec["state"] is None:
                log.error("step log: the state of step %s refers to a damaged line; "
                          "its record is left out", rec.get("step"))
                return None
        return (int(d["seq"]), table, StepRecord.from_json(rec), d["entries"], d["rec"].get("state"))
    row, at = list(d["row"]), _AT.get(table)
    if at is not None:
        row[at] = dt.datetime.fromisoformat(row[at])
    return (int(d["seq"]), table, row, None)


def _insert(store: "Store", records: Sequence[tuple]) -> None:
    """Records of the log into their tables; the caller holds a transaction."""
    steps = [r for r in records if r[1] == "steps"]
    if steps:
        store.append_steps([r[2] for r in steps], [e for r in steps for e in r[3]],
                           seqs=[r[0] for r in steps], columnar=False, hints=[r[4] for r in steps])
    for table, sql in _INSERT.items():
        rows = [r[2] for r in records if r[1] == table]
        if rows:
            marks = "(" + ", ".join("?" * len(rows[0])) + ")"
            store.execute(sql + ", ".join([marks] * len(rows)), [v for row in rows for v in row])
    for _, key, value in (r[2] for r in records if r[1] == "meta"):  # settings, in their order
        if value is None:
            store.execute("DELETE FROM fm_meta WHERE key = ?", [key])
        else:
            store.execute("INSERT OR REPLACE INTO fm_meta VALUES (?, ?)", [key, value])
