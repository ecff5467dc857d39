"""Event sources beyond HTTP: ``@fm.flow(on=fm.files("incoming/*.csv"))``
and ``@fm.flow(on=fm.poll(fn, every=60))``. A source is a watcher thread
that turns what it finds into named events (events.py), so each one is
stored once per delivery id in the history and starts one run of its flow,
exactly as ``POST /events/<name>`` does; the event name is the source's
``name``, by default ``files:<flow>`` or ``poll:<flow>``.

- **files**: a file is identified by its absolute path, size and mtime
  (nanoseconds): that triple, hashed, is the delivery id. So each file
  starts one run however often the folder is scanned and across kill -9,
  and a file rewritten under the same name (a new size or mtime) is a new
  arrival with a run of its own. Files present when the flow is defined
  count as arrivals, each once. A file is taken once its mtime is ``settle``
  seconds old, so one still being written is left for a later scan.
- **poll**: ``fn(cursor) -> (items, new_cursor)``. The items' events and the
  new cursor are committed in ONE transaction, so after a kill the next
  kernel polls again from the last committed cursor: no item is stored
  twice or skipped (given that ``fn`` answers a cursor the same way twice).

A kill between storing events and starting their runs is healed when the
source starts: the runs missing for events it stored are started then (run
ids are made from delivery ids, so nothing starts twice). A failing scan or
``fn`` is logged with its traceback and tried again after ``every`` s.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from typing import Any, Callable

from ..errors import UsageError
from .context import registry
from .events import KIND, check_name, receive_many, run_id_for
from .runs import start_once

log = logging.getLogger(__name__)
CURSOR_KIND = "poll_cursor"


class Source:
    """What fm.files and fm.poll share: the event name, the thread, catch-up."""

    kind = "source"

    def __init__(self, every: float, name: str | None) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
            raise UsageError(f"fm.{self.kind}(every={every!r}): expected a number of seconds > 0")
        self.every, self.name = float(every), (check_name(name, "event") if name else None)
        self.event: str | None = None  # the event name, once attached to its flow
        self._flow: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        """The events' ``source`` (the received_events view): kind and origin."""
        raise NotImplementedError

    def attach(self, fl: Any) -> None:
        """Start watching for flow ``fl`` (runs.py calls this once the flow is
        registered and pending runs may resume); a second call does nothing."""
        with self._lock:
            if self._flow not in (None, fl.name):
                raise UsageError(f"this fm.{self.kind}(...) already feeds flow {self._flow!r}; "
                                 f"give flow {fl.name!r} a source of its own")
            self._flow = fl.name
            self.event = self.name or f"{self.kind}:" + re.sub(r"[^A-Za-z0-9_.\-]", "_",
                                                                fl.name)[:190]
            if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, args=(fl, self._stop), daemon=True,
                                            name=f"fm-{self.kind}-{fl.name}")
            self._thread.start()

    def stop(self) -> None:
        """The thread ends after its current scan or call (not waited for)."""
        self._stop.set()

    def _loop(self, fl: Any, stop: threading.Event) -> None:
        caught_up = False
        while not stop.is_set():
            try:
                if not caught_up:
                    self.catch_up(fl)
                    caught_up = True
                self.tick(fl, stop)
            except Exception:  # the next tick tries again; never silently
                log.exception("%s (flow %r, events %r) failed; trying again in %g s",
                              self.label, fl.name, self.event, self.every)
            stop.wait(self.every)

    def catch_up(self, fl: Any) -> set[str]:
        """Start the runs missing for events this source stored (a kill came
        between the commit and the runs); the delivery ids it stored."""
        reg = registry()
        reg.journal.flush()
        store = reg.journal.store
        rows = store.query(f"SELECT payload->>'delivery_id', payload->'data' FROM fm_events"
                           f" WHERE kind = '{KIND}' AND payload->>'name' = ?"
                           " AND payload->>'source' = ? ORDER BY seq", [self.event, self.label]).rows
        want = {run_id_for(fl, self.event, d): (d, data) for d, data in rows}
        have = {r[0] for r in store.query("SELECT run_id FROM fm_run_records"
                                          " WHERE list_contains(?, run_id)", [list(want)]).rows}
        missing = [(rid, data) for rid, (_, data) in want.items() if rid not in have]
        for rid, data in missing:
            start_once(fl, rid, (json.loads(data) if data is not None else None,), {})
        if missing:
            log.info("%s: started %d run(s) of flow %r for events stored before a kill",
                     self.label, len(missing), fl.name)
        return {d for d, _ in want.values()}

    def tick(self, fl: Any, stop: threading.Event) -> None:
        raise NotImplementedError


class FileSource(Source):
    kind = "files"

    def __init__(self, pattern: str, every: float = 1.0, settle: float = 1.0,
                 name: str | None = None) -> None:
        if not isinstance(pattern, str) or not pattern.strip():
            raise UsageError(f"fm.files({pattern!r}): expected a glob such as 'incoming/*.csv'")
        if isinstance(settle, bool) or not isinstance(settle, (int, float)) or settle < 0:
            raise UsageError(f"fm.files(settle={settle!r}): expected seconds >= 0")
        super().__init__(every, name)
        self.given = pattern
        # Relative to the working directory where the flow is defined, fixed
        # now: a flow restored by a kernel started elsewhere watches the same folder.
        self.pattern = os.path.abspath(os.path.expanduser(pattern))
        self.settle = float(settle)
        self._seen: set[str] = set()

    def __reduce__(self):
        return (FileSource, (self.pattern, self.every, self.settle, self.name))

    def __repr__(self) -> str:
        return f"fm.files({self.pattern!r}, every={self.every:g})"

    @property
    def label(self) -> str:
        return f"files:{self.pattern}"

    def catch_up(self, fl: Any) -> set[str]:
        self._seen = super().catch_up(fl)  # files stored before are not looked at again
        return self._seen

    def tick(self, fl: Any, stop: threading.Event) -> None:
        found = self.scan()
        if found and not stop.is_set():
            receive_many(self.event, self.label, found)  # type: ignore[arg-type]
            self._seen.update(d for d, _ in found)

    def scan(self) -> list[tuple[str, dict[str, Any]]]:
        """(delivery id, payload) of each settled regular file not taken yet, by path."""
        out, now = [], time.time()
        for path in sorted(glob.glob(self.pattern, recursive=True)):
            try:
                st = os.stat(path)
            except FileNotFoundError:  # moved away between the listing and now
                continue
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < self.settle:
                continue
            did = file_id(path, st)
            if did not in self._seen:
                out.append((did, {"path": path, "size": st.st_size, "mtime": st.st_mtime}))
        return out


def file_id(path: str, st: os.stat_result) -> str:
    """The delivery id of one version of a file: path, size and mtime."""
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return "file-" + hashlib.sha256(key).hexdigest()[:40]


class PollSource(Source):
    kind = "poll"

    def __init__(self, fn: Callable[[Any], Any], every: float = 60.0, start: Any = None,
                 name: str | None = None) -> None:
        if not callable(fn):
            raise UsageError(f"fm.poll({fn!r}): expected a function fn(cursor) -> (items, new_cursor)")
        super().__init__(every, name)
        self.fn, self.initial = fn, _json(start, "the start cursor of fm.poll")

    def __reduce__(self):
        return (PollSource, (self.fn, self.every, self.initial, self.name))

    def __repr__(self) -> str:
        return f"fm.poll({_fn_name(self.fn)}, every={self.every:g})"

    @property
    def label(self) -> str:
        return f"poll:{_fn_name(self.fn)}"

    def cursor(self, store: Any) -> tuple[int, Any]:
        """(ticks committed so far, the cursor to poll from)."""
        rows = store.query(
            f"SELECT payload->>'tick', payload->'cursor' FROM fm_events WHERE kind = '{CURSOR_KIND}'"
            " AND payload->>'name' = ? ORDER BY seq DESC LIMIT 1", [self.event]).rows
        if not rows:
            return 0, self.initial
        return int(rows[0][0]), json.loads(rows[0][1]) if rows[0][1] is not None else None

    def tick(self, fl: Any, stop: threading.Event) -> None:
        store = registry().journal.store
        ticks, cursor = self.cursor(store)
        items, new_cursor = self.call(cursor)
        if (not items and new_cursor == cursor) or stop.is_set():
            return  # nothing new: no row per idle tick
        n = ticks + 1
        found = [(f"t{n}.{i}", item) for i, item in enumerate(items)]
        mark = (CURSOR_KIND, None, None, {"name": self.event, "source": self.label, "tick": n,
                                          "cursor": new_cursor, "items": len(items)})
        # The cursor commits with the events, and only if no other poller of
        # this name (a re-run cell's) moved it since we read it. The guard runs
        # holding the store's lock: it must not wait for the registry's lock,
        # which a thread starting a run holds while it waits for the store.
        stored = receive_many(self.event, self.label, found, extra=[mark],  # type: ignore[arg-type]
                              guard=lambda: self.cursor(store)[0] == ticks)
        if stored is None:
            log.info("%s: cursor moved by another poller of %r since it was read; "
                     "%d item(s) dropped, polled again next tick", self.label, self.event, len(items))

    def call(self, cursor: Any) -> tuple[list[Any], Any]:
        got = self.fn(cursor)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise UsageError(f"{self.label} returned {type(got).__name__}; expected a pair "
                             "(items, new_cursor)")
        items, new_cursor = got
        items = list(items or [])
        for i, item in enumerate(items):
            _json(item, f"item {i} from {self.label}")
        return items, _json(new_cursor, f"the cursor from {self.label}")


def _json(value: Any, what: str) -> Any:
    """``value`` if it is plain JSON (stored in the history, seen by SQL), else UsageError."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be plain JSON (dict, list, str, int, float, bool, "
                         f"None): {exc}") from None


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def files(pattern: str, *, every: float = 1.0, settle: float = 1.0,
          name: str | None = None) -> FileSource:
    """A source for ``@fm.flow(on=...)``: one run per file matching ``pattern``
    (a glob; relative to the working directory, ``**`` recursive), each file
    once, its run given ``{"path", "size", "mtime"}``. The folder is scanned
    every ``every`` s; a file is taken when its mtime is ``settle`` s old."""
    return FileSource(pattern, every=every, settle=settle, name=name)


def poll(fn: Callable[[Any], Any], *, every: float = 60.0, start: Any = None,
         name: str | None = None) -> PollSource:
    """A source for ``@fm.flow(on=...)``: every ``every`` s, ``fn(cursor)``
    answers ``(items, new_cursor)``; one run per item (the item its
    argument). The cursor (first ``start``) is kept in the history with the
    events it produced, so no item is seen twice or missed across kill -9.
    Items and cursors must be plain JSON."""
    return PollSource(fn, every=every, start=start, name=name)
