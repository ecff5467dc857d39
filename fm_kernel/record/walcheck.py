"""Whether DuckDB's replay of a write-ahead log gave back every step the
dead kernel had acknowledged.

DuckDB 2.0 replays a log damaged in the middle only up to the damage and
says nothing (tests/faults/test_record_integrity.py shows both ways it
fails: silently short, or an error at open). So the log is read as found,
before DuckDB touches it, and after the replay the last step is compared
with what the in-flight marker (recorder.py) says had committed. A short
replay keeps the log as found beside the history, and the history is left
as it is (store.py closes it without a checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

from .inflight import read_marker

KEPT_SUFFIX = ".wal.damaged"


def log_as_found(history: Path) -> bytes | None:
    """The write-ahead log's bytes before anything replays it (None: no log)."""
    try:
        data = Path(str(history) + ".wal").read_bytes()
    except OSError:
        return None
    return data or None


def acknowledged_step(history: Path) -> int | None:
    """The last step the previous kernel had committed, by its marker: the
    step it names if its record committed, else the one before it."""
    data = read_marker(Path(str(history) + ".inflight"))  # never through a link (inflight.py)
    try:
        step = int(data["step"])  # type: ignore[index]
    except (ValueError, TypeError, KeyError):  # no marker (None), or no step in it
        return None
    return step if data.get("fm_committed") else step - 1  # type: ignore[union-attr]


def keep_log(history: Path, data: bytes | None) -> Path | None:
    """Keep ``data`` (the log as found) beside the history, owner-only; the
    first copy kept is never overwritten, as it holds the most."""
    if data is None:
        return None
    kept = Path(str(history) + KEPT_SUFFIX)
    try:
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return kept
    except OSError:
        return None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return kept
