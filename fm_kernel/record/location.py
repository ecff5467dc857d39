"""Where a kernel's history lives, and where it goes when that place is taken.

Precedence (spec, "Where the history lives"): FM_HISTORY; else beside the
notebook (FM_NOTEBOOK, set by `fm run` and the papermill engine, or
JPY_SESSION_NAME, set by Jupyter servers); else a kernel learns the notebook
from its first requests, or records to a history of its own session
(identity.py decides; docs/where-history-lives.md). ``history_path`` without
a notebook still names ``<cwd>/.flowmetal/history.duckdb``: the CLI's default.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

from .. import errors
from . import handover
from .refusals import HistoryDamaged
from .store import Store

LOCK_WAIT_S = 2.0  # a CLI read may hold the file for a moment; outwait it


def notebook_path(env: dict[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    name = env.get("FM_NOTEBOOK") or env.get("JPY_SESSION_NAME")
    if not name:
        return None
    p = Path(name)
    if p.is_absolute():
        return p
    # Jupyter servers pass the path relative to their root, and start the
    # kernel in the notebook's own folder: the file name is what is left.
    if (cwd / p).exists():
        return (cwd / p).resolve()
    return cwd / p.name


def beside(notebook: Path) -> Path:
    """The history of ``notebook``: ``<its folder>/.flowmetal/<its name>.duckdb``."""
    return notebook.parent / ".flowmetal" / f"{notebook.name}.duckdb"


SESSION_PREFIX = "session-"


def session_path(cwd: Path, kernel_id: str) -> Path:
    """The history of one kernel session whose notebook cannot be known. A
    restart keeps the kernel id, so it finds the same file again."""
    folder = cwd / ".flowmetal"
    tag = kernel_id[:8]
    found = sorted(folder.glob(f"{SESSION_PREFIX}*-{tag}.duckdb")) if folder.is_dir() else []
    if found:
        return found[-1]
    return folder / f"{SESSION_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{tag}.duckdb"


def history_path(env: dict[str, str] | None = None, cwd: Path | None = None) -> Path:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if env.get("FM_HISTORY"):
        return Path(env["FM_HISTORY"]).expanduser().absolute()
    nb = notebook_path(env, cwd)
    if nb is not None:
        return beside(nb)
    return cwd / ".flowmetal" / "history.duckdb"


def open_history(path: Path, kernel_id: str, take_over: bool = True) -> tuple[Store, str | None]:
    """Open the history at ``path``; if it cannot be had, open a named
    substitute. Returns the store and a one-line notice (None if all is well).
    ``take_over``: a history `fm worker` holds is asked of it (handover.py).
    """
    try:  # Store.open refuses a history whose files are links or another user's
        # a worker lets go when asked: no use outwaiting it first
        store = _open_waiting(path, lambda: take_over and handover.held_by_worker(path))
        return store, _private_folder(path)
    except HistoryDamaged as exc:
        # kept as found, never written again by us: the user decides what to save
        alt = path.with_name(f"{path.stem}.{kernel_id[:8]}{path.suffix}")
        kept = f", its write-ahead log copied to {exc.kept}" if exc.kept else ""
        return Store.open(alt), (f"flowmetal: {path} is damaged ({exc.cause}); it is "
                                 f"left as it is{kept}; this kernel records to {alt}")
    except errors.HistoryLocked as exc:
        who = f"process {exc.pid}" if exc.pid else "another process"
        if take_over:
            taken, who = handover.take_over(path, kernel_id)
            if taken is not None:
                return taken, _joined(_taken_notice(path, taken), _private_folder(path))
        alt = path.with_name(f"{path.stem}.{kernel_id[:8]}{path.suffix}")
        return Store.open(alt), f"flowmetal: {path} is in use by {who}; this kernel records to {alt}"
    except errors.SchemaTooNew as exc:
        # never touch a history a newer version wrote: record beside it
        alt = path.with_name(f"{path.stem}.{kernel_id[:8]}{path.suffix}")
        return Store.open(alt), f"flowmetal: {exc}; this kernel records to {alt}"
    except errors.HistoryUnwritable as exc:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        alt = Path(tempfile.gettempdir()) / f"flowmetal-{os.getuid()}" / digest / path.name
        try:
            _own_dir(alt.parent.parent)  # in a shared /tmp: made by us, 0700, or not used
            store = Store.open(alt)
        except (errors.HistoryError, OSError):
            store = Store.open(Path(":memory:"))
            alt = Path(":memory:")
        return store, f"flowmetal: cannot write {path} ({_short(exc.cause)}); this kernel records to {alt}"


def _taken_notice(path: Path, store: Store) -> str | None:
    if store.handed_over is None:
        return None
    return (f"flowmetal: `fm worker` (process {store.handed_over.pid}) handed {path} over to this "
            "kernel; it takes the history back when this kernel ends")


def _joined(*notices: str | None) -> str | None:
    return "\n".join(n for n in notices if n) or None


def _private_folder(path: Path) -> str | None:
    """Keep the history's files owner-only; say so once when its folder lets
    other users in. DuckDB makes the write-ahead log with the umask's mode
    (and anew after each checkpoint), so only the folder can keep it private."""
    if str(path) == ":memory:":
        return None
    folder = path.parent
    try:
        st = folder.stat()
        for p in (path, Path(str(path) + ".wal")):
            if p.exists() and p.stat().st_uid == os.getuid():
                p.chmod(0o600)
        if st.st_mode & 0o077 and folder.name == ".flowmetal" and st.st_uid == os.getuid():
            folder.chmod(0o700)  # our own folder: tighten it rather than warn
            return None
    except OSError:
        return None
    if st.st_mode & 0o022:
        return (f"flowmetal: the folder of {path} is writable by other users "
                f"(mode {stat.filemode(st.st_mode)}): they can plant files beside the history; "
                "keep it in a folder only you can write (the default .flowmetal/ is)")
    if st.st_mode & 0o011:
        return (f"flowmetal: the folder of {path} is open to other users "
                f"(mode {stat.filemode(st.st_mode)}): they can read its write-ahead log (your "
                "code and outputs); keep it in a private folder (the default .flowmetal/ is)")
    return None


def _own_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{folder} is not a private folder of this user")


def _open_waiting(path: Path, ask_instead: Callable[[], bool]) -> Store:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return Store.open(path)
        except errors.HistoryLocked:
            if time.monotonic() >= deadline or ask_instead():
                raise
            time.sleep(0.1)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
