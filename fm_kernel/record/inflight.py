"""The in-flight marker: a small file naming the step being executed now.

Written (not fsynced) when a cell starts and again once its record commits:
a process killed with -9 still leaves its page-cache writes behind, so the
next kernel learns which step died, and whether its record committed,
without this kernel paying a database commit per cell start (location.py
compares it with what DuckDB's log replayed).

The file stays open and is overwritten in place, a shorter record padded
with spaces, not truncated first: on ext4 a truncate of a file whose page is
dirty or under writeback waits on the journal (93 us a write on average and
3.5 ms at worst in a kernel; a pwrite(2) alone costs a few microseconds).
Written in place, a record of several pages can be cut between pages by
kill -9, leaving the new record's head on the old one's tail, which may
parse: each record therefore ends with the CRC-32 of its JSON, and a record
whose CRC does not match reads as none. The file is opened without
following links and must be a regular file of this user (another user may
share the folder: docs/security.md)."""

from __future__ import annotations

import json
import logging
import os
import stat
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import StepRecord

log = logging.getLogger(__name__)

TRIM = 64 * 1024  # a file this much longer than the record is cut back
CHECK = b"\n#"  # between a record's JSON and its CRC


def read_marker(path: Path) -> dict[str, Any] | None:
    """The record in the marker at ``path`` as JSON, None for no marker, a
    torn one (its CRC does not match), or a link (another user's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(TRIM + (1 << 20)).rstrip()
        body, sep, crc = raw.rpartition(CHECK)
        if not sep or crc != b"%08x" % zlib.crc32(body):
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


class InflightMarker:
    TRIM = TRIM

    def __init__(self, history: Path):
        self.path = Path(str(history) + ".inflight")
        self._fd: int | None = None
        self._size = 0  # bytes in the file
        self._warned = False

    def write(self, rec: StepRecord, committed: bool = False) -> None:
        """Name ``rec`` as begun, or (``committed``) as recorded."""
        body = json.dumps({**rec.to_json(), "fm_committed": committed}).encode()
        data = body + CHECK + b"%08x" % zlib.crc32(body)
        try:
            fd = self._open()
            if self._size - len(data) > TRIM:  # after a huge cell: do not pad forever
                self._put(fd, data)
                os.ftruncate(fd, len(data))
                self._size = len(data)
            else:
                self._put(fd, data.ljust(self._size))
                self._size = max(self._size, len(data))
        except OSError as exc:
            if not self._warned:  # once: a full disk would say it every cell
                self._warned = True
                log.warning("could not write %s (%s): a kernel killed mid-cell will be found "
                            "from the database's 'running' row only", self.path, exc)

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                os.close(fd)
                raise OSError(f"{self.path} is not a regular file of this user: not written through")
            self._fd, self._size = fd, st.st_size
        return self._fd

    def _put(self, fd: int, data: bytes) -> None:
        done = os.pwrite(fd, data, 0)
        if done != len(data):  # a full disk writes short without an error
            self._size = max(self._size, done)
            raise OSError(f"wrote {done} of {len(data)} bytes (is the disk full?)")

    def read(self) -> StepRecord | None:
        return self.read_with_commit()[0]

    def read_with_commit(self) -> tuple[StepRecord | None, bool]:
        """The step named, and whether its record had committed; (None,
        False) for no marker, a torn one, or one that is not ours to read."""
        from .store import StepRecord  # store.py reads markers too (walcheck): no cycle at import

        data = read_marker(self.path)
        if data is None:
            return None, False
        try:
            committed = bool(data.pop("fm_committed", False))
            return StepRecord.from_json(data), committed
        except (ValueError, TypeError, KeyError, AttributeError):
            return None, False

    def clear(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self.path.unlink()
        except OSError:
            pass
