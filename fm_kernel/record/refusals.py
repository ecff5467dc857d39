"""Why a history is not opened, in one line the user can act on: DuckDB's
error cut to its first line, the process holding the file, a damaged file
kept as found, side files that are links or another user's.

No DuckDB here: store.py catches what DuckDB raises and hands it in."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .. import errors

# DuckDB's words for a refusal by the operating system rather than a damaged file
OS_REFUSALS = ("Permission denied", "Read-only file system", "No space left", "Is a directory")

# Every file or folder a history keeps beside its database, the database first.
SIDECARS = ("", ".wal", ".steplog", ".flowlog", ".inflight", ".objects", ".endpoint.json")


class HistoryDamaged(errors.HistoryUnwritable):
    """The database or its write-ahead log is there but DuckDB cannot read it
    (or replays less than was acknowledged); ``kept`` is the log as found."""

    def __init__(self, path: Path, cause: BaseException, kept: Path | None = None):
        super().__init__(path, cause)
        self.kept = kept
        copy = f"; its write-ahead log as found is kept at {kept}" if kept else ""
        self.args = (f"history {path} is damaged ({cause}); it is left as it is{copy}",)


def refuse_foreign(path: Path) -> None:
    """Raise HistoryUnwritable when a file of the history is a link or
    belongs to another user: in a folder others can write, a planted
    ``.steplog`` or ``.flowlog`` would inject records at the next open, and a
    link at ``.inflight`` would be written through."""
    for suffix in SIDECARS:
        p = Path(str(path) + suffix)
        try:  # the database itself may be a link the user made, to a file of theirs
            st = os.stat(p) if suffix == "" else os.lstat(p)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
            why = "a symbolic link" if stat.S_ISLNK(st.st_mode) else f"owned by uid {st.st_uid}"
            raise errors.HistoryUnwritable(path, OSError(f"{p.name} is {why}, not a file of yours"))


def owner_only(path: Path) -> None:
    """A new history and its log readable by their owner alone, whatever the umask."""
    for p in (path, Path(str(path) + ".wal")):
        try:
            p.chmod(0o600)
        except OSError:
            pass


def lock_holder(message: str) -> str | None:
    """The process DuckDB names in a lock conflict:
    "... Conflicting lock is held in <exe> (PID 1234) by user ..."."""
    marker = "(PID "
    i = message.find(marker)
    if i < 0:
        return None
    return message[i + len(marker):].split(")", 1)[0].strip()


def named(exc: BaseException) -> OSError:
    """DuckDB's reason with its quoted paths cut to file names: one readable line."""
    return OSError(re.sub(r'"([^"]*)"', lambda m: Path(m.group(1)).name, first_line(exc))[:200])


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an error (DuckDB appends hints and context lines)."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
