"""Where a kernel's history lives, and where it goes when that place is taken.

Precedence (spec, "Where the history lives"): FM_HISTORY; else beside the
notebook (FM_NOTEBOOK, set by `fm run`, or JPY_SESSION_NAME, set by Jupyter
servers); else ``<cwd>/.flowmetal/history.duckdb``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from .. import errors
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


def history_path(env: dict[str, str] | None = None, cwd: Path | None = None) -> Path:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if env.get("FM_HISTORY"):
        return Path(env["FM_HISTORY"]).expanduser().absolute()
    nb = notebook_path(env, cwd)
    if nb is not None:
        return nb.parent / ".flowmetal" / f"{nb.name}.duckdb"
    return cwd / ".flowmetal" / "history.duckdb"


def open_history(path: Path, kernel_id: str) -> tuple[Store, str | None]:
    """Open the history at ``path``; if it cannot be had, open a named
    substitute. Returns the store and a one-line notice (None if all is well).
    """
    try:
        return _open_waiting(path), None
    except errors.HistoryLocked as exc:
        alt = path.with_name(f"{path.stem}.{kernel_id[:8]}{path.suffix}")
        store = Store.open(alt)
        who = f"process {exc.pid}" if exc.pid else "another process"
        return store, f"flowmetal: {path} is in use by {who}; this kernel records to {alt}"
    except errors.SchemaTooNew as exc:
        # never touch a history a newer version wrote: record beside it
        alt = path.with_name(f"{path.stem}.{kernel_id[:8]}{path.suffix}")
        return Store.open(alt), f"flowmetal: {exc}; this kernel records to {alt}"
    except errors.HistoryUnwritable as exc:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        alt = Path(tempfile.gettempdir()) / f"flowmetal-{os.getuid()}" / digest / path.name
        try:
            store = Store.open(alt)
        except errors.HistoryError:
            store = Store.open(Path(":memory:"))
            alt = Path(":memory:")
        return store, f"flowmetal: cannot write {path} ({_short(exc.cause)}); this kernel records to {alt}"


def _open_waiting(path: Path) -> Store:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return Store.open(path)
        except errors.HistoryLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
