"""The lock on a Store's DuckDB connection, which knows which thread holds it.

Store asks "does this thread hold the connection already?" to decide what a
read may flush first: the other buffered writers (the flow log) take their
own lock and then wait for the connection, so a thread holding the
connection must not wait for them. ``threading.RLock`` keeps that answer
private (``_is_owned``), so this lock keeps its own."""

from __future__ import annotations

import threading
from typing import Any


class ConnectionLock:
    """A re-entrant lock with ``held_here()``; used as ``with lock:``."""

    __slots__ = ("_lock", "_owner", "_depth")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0  # the holder's nesting; only the holder changes it

    def __enter__(self) -> "ConnectionLock":
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
        self._lock.release()

    def held_here(self) -> bool:
        """Whether the calling thread holds the lock. Safe without the lock:
        only the holder writes its own id here, and clears it before release."""
        return self._owner == threading.get_ident()
