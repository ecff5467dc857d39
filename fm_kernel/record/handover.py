"""The kernel's side of the hand-over (docs/reliability.md, "One writer at a
time"): a history has one writer, and `fm worker` lends it to a kernel.

A kernel that finds its history locked looks at who holds the lock (the
``F_GETLK`` answer names the process without taking the lock) and at the
endpoint file beside the history. If the holder is the `fm worker` named
there (``"role": "worker"``), the kernel asks it to let go (``POST
/worker/release`` with the file's token), waits for the lock to be free, and
opens the history itself. Anything else (a kernel holds it, no answer, no
release in ``WAIT_S``) leaves the caller to record beside it, with the reason.
The worker's side is cli/handover.py.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..http_client import Patience, send
from .store import Store

log = logging.getLogger(__name__)

WAIT_S = 20.0  # for the worker to let go: it finishes its requests and flushes first
FILE_WAIT_S = 3.0  # a worker that has the lock but has not written its endpoint file yet
ENDPOINT_SUFFIX = ".endpoint.json"  # endpoint.endpoint_file (a layer above this one)
_FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid


@dataclass(frozen=True)
class HandedOver:
    """Who handed a history over: the kernel keeps the worker's token, so a
    sender's requests go on working with the token it has."""

    pid: int | None
    token: str | None


def holder(path: Path) -> int | None:
    """The pid of the process holding the history's lock (DuckDB's fcntl lock
    on the file), or None when it is free. Never call this in a process that
    holds the history: closing any descriptor of the file drops the
    process's own fcntl locks on it."""
    try:
        fd = os.open(path, os.O_RDONLY)  # a link the user made to their file is fine
    except OSError:
        return None  # no file: nobody holds it
    try:
        asked = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, asked))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def endpoint_of(path: Path, pid: int | None) -> dict[str, Any] | None:
    """The endpoint file's content if process ``pid`` wrote it (not a stale one)."""
    try:
        info = json.loads(Path(str(path) + ENDPOINT_SUFFIX).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and pid is not None and info.get("pid") == pid else None


def worker_endpoint(path: Path, pid: int | None) -> dict[str, Any] | None:
    """The endpoint file's content if it names `fm worker` process ``pid`` as
    the one serving this history."""
    info = endpoint_of(path, pid)
    return info if info is not None and info.get("role") == "worker" else None


def held_by_worker(path: Path) -> bool:
    return worker_endpoint(path, holder(path)) is not None


def take_over(path: Path, kernel_id: str) -> tuple[Store | None, str]:
    """(the history, opened here, "") when `fm worker` held it and let go;
    else (None, why not: a clause for the caller's one line)."""
    pid = holder(path)
    deadline = time.monotonic() + FILE_WAIT_S
    # a holder starting up writes its endpoint file just after taking the lock
    while pid is not None and endpoint_of(path, pid) is None and time.monotonic() < deadline:
        time.sleep(0.1)
        pid = holder(path)
    info = worker_endpoint(path, pid)
    if pid is None:
        return _open_by(path, None, time.monotonic() + WAIT_S, "its holder let go")
    if info is None:
        return None, f"process {pid}, not `fm worker` (only a worker hands a history over)"
    try:
        ask_release(info, kernel_id, time.monotonic() + WAIT_S)
    except (OSError, ValueError) as exc:  # urllib's errors are OSErrors
        return None, f"`fm worker` (process {pid}), which did not agree to hand it over ({exc})"
    return _open_by(path, HandedOver(pid, info.get("token")), time.monotonic() + WAIT_S,
                    f"`fm worker` (process {pid})")


def ask_release(info: dict[str, Any], kernel_id: str, deadline: float) -> None:
    """POST /worker/release until it answers 202 (503: the worker is starting,
    retried until ``deadline``); ValueError for any other answer."""
    answer = send((info["url"], info["token"]), "POST", "/worker/release",
                  {"kernel_id": kernel_id, "pid": os.getpid()}, timeout=10,
                  patience=Patience(for_s=max(0.0, deadline - time.monotonic()), log=log))
    if answer.status != 202:
        raise ValueError(f"it answered {answer.status}: {answer.error()}")


def _open_by(path: Path, by: HandedOver | None, deadline: float,
             who: str) -> tuple[Store | None, str]:
    while True:
        if holder(path) is None:
            try:
                store = Store.open(path)
            except errors.HistoryLocked:
                pass  # taken again in between: keep waiting until the deadline
            else:
                store.handed_over = by
                return store, ""
        if time.monotonic() >= deadline:
            return None, f"{who}, which did not let go within {WAIT_S:g} s"
        time.sleep(0.05)
