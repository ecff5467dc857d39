"""Reading a history whose write-ahead log is not its owner's.

DuckDB replays ``<history>.wal`` into what even a read-only connection sees
(without changing the file). A writer refuses a history whose side files are
links or another user's (refusals.refuse_foreign); a reader (``fm log``,
``fm sql``, an export, a look into a neighbour history) instead reads a
private copy of the database file alone, so a log planted in a shared folder
is neither followed, read, nor modified, and says so in one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .. import errors


def foreign_wal(history: Path) -> str | None:
    """Why ``<history>.wal`` is not to be read (a link, or owned by neither
    this user nor the database's owner), or None."""
    wal = Path(str(history) + ".wal")
    try:
        st = os.lstat(wal)
        owner = os.stat(history).st_uid
    except OSError:
        return None  # no log (or no database: the open says so)
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if st.st_uid not in (os.getuid(), owner):
        return f"owned by uid {st.st_uid}"
    return None


def reader_target(history: Path) -> tuple[Path, Path | None]:
    """The file a read-only connection should open: ``history`` itself, or,
    when its log is foreign, a copy of the database file alone in a private
    folder (returned second, for the caller to remove)."""
    why = foreign_wal(history)
    if why is None:
        return history, None
    if held_here(history):  # opening and closing the file here would drop this process's lock
        raise errors.HistoryLocked(history, str(os.getpid()))
    from .handover import holder

    pid = holder(history)
    if pid is not None:  # its writer is live: a copy could be torn, and DuckDB would refuse too
        raise errors.HistoryLocked(history, str(pid))
    folder = Path(tempfile.mkdtemp(prefix="flowmetal-read-"))  # 0700
    copy = folder / history.name
    try:
        shutil.copyfile(history, copy)  # the database may be a link the user made; the log is not opened
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise errors.HistoryError(f"cannot copy {history} to read it without its log: {exc}") from None
    print(f"flowmetal: {history.name}.wal is {why}, not a file of yours: reading {history} "
          "without it (writes only in that log are not shown)", file=sys.stderr, flush=True)
    return copy, folder


def held_here(history: Path) -> bool:
    """Whether this process holds a lock on the database file (Linux's
    /proc/locks; elsewhere False). A POSIX lock goes when the process closes
    any descriptor of the file, so a reader in the kernel that holds the
    history must not copy it."""
    try:
        st = os.stat(history)
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    me = f" {os.getpid()} {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    return any(me in line for line in locks.splitlines())


@contextlib.contextmanager
def reading(history: Path) -> Iterator[Path]:
    """``reader_target`` for one short read: the private copy goes after."""
    target, folder = reader_target(history)
    try:
        yield target
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
