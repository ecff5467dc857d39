"""One model per notebook: the open views of this kernel hear of every
change to its history — HEAD moved (a cell, rewind, undo, fork, checkout,
from any view or a magic), a flow run journaled a step, a signal came in
(from a view, a cell, or from outside through the endpoint) — pushed from
the kernel, never polled by the user.

The layers that change things call `record.changes.notify` (they must not
import widgets); the hub listens there once the first view subscribes.
Notifications arrive on any thread — the main thread in a cell, a flow's
thread, the endpoint's — and are gathered and handed to the kernel's loop,
the one place views change, at most every `MIN_GAP` seconds: a fan-out of
200 steps refreshes a view a few times, not 200.

    hub().subscribe(view)    # view.changed(kinds) on the loop; kinds ⊆ {"head", "flow", "cell"}
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from ..record import changes
from .loader import kernel_loop

__all__ = ["Hub", "MIN_GAP", "hub"]

log = logging.getLogger(__name__)

MIN_GAP = 0.1  # seconds between two rounds of refreshes


class Hub:
    """The views of one kernel and the changes they have not yet been told of."""

    def __init__(self) -> None:
        self._views: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._scheduled = False
        self._last = 0.0
        self.rounds = 0  # how many rounds of refreshes have run (tests read it)

    def subscribe(self, view: Any) -> None:
        self._views.add(view)
        changes.listen(self.hear)

    def unsubscribe(self, view: Any) -> None:
        self._views.discard(view)

    def hear(self, kind: str) -> None:
        """A change of ``kind``, from any thread: one round of refreshes soon."""
        with self._lock:
            self._pending.add(kind)
            if self._scheduled or not self._views:
                return
            self._scheduled = True
        loop = kernel_loop()
        if loop is None:  # outside a kernel (in-process use): tell the views at once
            self._flush()
        else:
            loop.add_callback(self._schedule, loop)  # add_callback is the thread-safe door

    def _schedule(self, loop: Any) -> None:
        wait = self._last + MIN_GAP - time.monotonic()
        loop.call_later(max(0.0, wait), self._flush)

    def _flush(self) -> None:
        with self._lock:
            kinds, self._pending, self._scheduled = self._pending, set(), False
            self._last = time.monotonic()
        self.rounds += 1
        for view in list(self._views):
            try:
                view.changed(frozenset(kinds))
            except Exception:  # one broken view must not keep the others stale
                log.exception("refreshing %s after %s failed", type(view).__name__, sorted(kinds))


_HUB: Hub | None = None


def hub() -> Hub:
    """This kernel's hub, made by the first view that asks."""
    global _HUB
    if _HUB is None:
        _HUB = Hub()
    return _HUB
