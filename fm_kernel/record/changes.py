"""Who wants to hear that this kernel's history changed: HEAD moved, a cell
was recorded, a flow run journaled something. Lower layers (runtime,
flows) call `notify`; the widgets' hub `listen`s. It lives down here so
that the layers that change things never import the ones that show them.

Nothing listens until someone calls `listen` (explicitly, never at import
time). `notify` may be called from any thread and returns at once: a
listener that needs another thread (the kernel's loop) hands itself over
there; a failing listener is logged and never reaches the caller.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

__all__ = ["Listener", "listen", "listeners", "notify", "unlisten"]

log = logging.getLogger(__name__)

# kind: "head" (HEAD moved or a cell was recorded), "flow" (a run's journal grew)
Listener = Callable[[str], None]

_LISTENERS: list[Listener] = []
_LOCK = threading.Lock()


def listen(fn: Listener) -> None:
    with _LOCK:
        if fn not in _LISTENERS:
            _LISTENERS.append(fn)


def unlisten(fn: Listener) -> None:
    with _LOCK:
        if fn in _LISTENERS:
            _LISTENERS.remove(fn)


def listeners() -> list[Listener]:
    with _LOCK:
        return list(_LISTENERS)


def notify(kind: str) -> None:
    if not _LISTENERS:  # the common case (no view open): no lock, no copy
        return
    for fn in listeners():
        try:
            fn(kind)
        except Exception:  # the change itself happened; a view failing to hear it is no error
            log.exception("a listener of %r changes failed", kind)
