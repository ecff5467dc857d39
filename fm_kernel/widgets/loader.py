"""Heavy work started by a widget event — loading a large past value,
comparing two DataFrames — runs off the kernel's main thread.

The kernel handles a widget's comm messages on its main thread, in turn with
execute requests. A click that loaded a 1 GB value there would hold up the
cell queued behind it for as long as the load takes. So an event only
*starts* the work: one loader thread does it, and the result is handed back
to the kernel's loop, the only place views change, so a view never races
with itself. Inside a cell (a user calling ``inspector.show("df")``) or
outside a kernel the work runs at once: the caller asked to wait for it.

    load(lambda: expensive(), lambda ok, value: view.update(ok, value),
         wanted=lambda: view.token is token)
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["load", "from_frontend", "kernel_loop", "pending"]

Done = Callable[[bool, Any], None]

_QUEUE: "queue.Queue[tuple[Callable[[], Any], Done, Callable[[], bool], Any]]" = queue.Queue()
_STARTED = threading.Lock()
_THREAD: threading.Thread | None = None
_BUSY = threading.Event()  # set while a load runs; tests and `pending()` read it


def _kernel() -> Any:
    try:
        from IPython import get_ipython

        return get_ipython().kernel  # type: ignore[union-attr]
    except Exception:
        return None


def kernel_loop() -> Any:
    """The kernel's main-thread loop (tornado), or None outside a kernel."""
    return getattr(_kernel(), "io_loop", None)


def from_frontend() -> bool:
    """True while the kernel handles a message from a widget (a click, a
    typed value); False inside a cell and outside a kernel."""
    k = _kernel()
    try:
        return k.get_parent("shell")["header"]["msg_type"] == "comm_msg"
    except Exception:
        return False


def pending() -> bool:
    """Whether a load is queued or running."""
    return _BUSY.is_set() or not _QUEUE.empty()


def load(work: Callable[[], Any], done: Done, wanted: Callable[[], bool] = lambda: True,
         background: bool | None = None) -> None:
    """Run ``work()`` and call ``done(True, result)`` or ``done(False, exc)``.

    ``background`` (default: the call came from a widget event) puts the work
    on the loader thread and ``done`` on the kernel's loop; ``wanted`` is
    asked before each so a view skips work it no longer shows."""
    loop = kernel_loop()
    if background is None:
        background = from_frontend()
    if not background or loop is None:
        done(*_attempt(work))
        return
    _ensure_thread()
    _QUEUE.put((work, done, wanted, loop))


def _attempt(work: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, work()
    except Exception as exc:  # handed to the view, which names it
        return False, exc


def _ensure_thread() -> None:
    global _THREAD
    with _STARTED:
        if _THREAD is None or not _THREAD.is_alive():
            # daemon: a load in progress must not hold up the kernel's exit
            _THREAD = threading.Thread(target=_serve, name="fm-widget-loader", daemon=True)
            _THREAD.start()


def _serve() -> None:
    while True:
        work, done, wanted, loop = _QUEUE.get()
        if not wanted():
            continue
        _BUSY.set()
        try:
            ok, value = _attempt(work)
        finally:
            _BUSY.clear()
        loop.add_callback(_finish, done, wanted, ok, value)


def _finish(done: Done, wanted: Callable[[], bool], ok: bool, value: Any) -> None:
    if wanted():
        done(ok, value)
