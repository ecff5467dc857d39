"""`fm worker` as a supervisor: one writer at a time, lent to kernels
(docs/reliability.md, "One writer at a time").

The worker's serving process (cli/worker.py) holds the history while no
kernel wants it. A kernel that opens the history asks it to let go
(record/handover.py); it hands over and exits RELEASED, and this process
stands by: it waits for the kernel to take the lock, then for the lock to be
free again (the kernel ended, cleanly or killed), for ``GRACE_S`` in a row so
that a restarting kernel gets it back first, and starts a serving process
again, which restores, resumes pending runs and schedules, and binds the
same port. A worker started while a kernel holds the history stands by the
same way (``--exit-if-held``: exit 1 at once, as before).

Separate processes, because a hand-over must stop every run thread at once
at a safe point, and a process exit does that; the serving process is never
asked to bring a history back to life in place. For the same reason a
serving process that dies on its own (killed -9 by the OOM killer, a bug) is
replaced by a new one, which resumes what it left like after any kill, with
a growing pause between restarts (``Crashes``) and one line each time; only
``CRASHES_ALLOWED`` deaths within ``CRASH_WINDOW_S`` make the supervisor give
up, since a process that cannot stay up would only spin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from ..record.handover import endpoint_of, holder
from .worker import FAILED, HELD, RELEASED, STOPPED

POLL_S = 0.5  # how often a standing-by worker looks at the lock
GRACE_S = 3.0  # free this long in a row before the worker takes it back
TAKEN_WAIT_S = 20.0  # after a release, for the kernel that asked to take the lock
CRASHES_ALLOWED = 5  # serving processes dying within CRASH_WINDOW_S: the supervisor gives up
CRASH_WINDOW_S = 60.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # pause before the 1st, 2nd, ... restart within the window


def supervise(history: Path, stand_by: bool = True) -> int:
    """``fm worker``: serve ``history`` whenever no kernel holds it, until SIGTERM."""
    if not history.exists():
        print(f"fm worker: no history at {history}", file=sys.stderr)
        return FAILED
    stop = threading.Event()
    child: list[subprocess.Popen] = []
    kept = Kept()
    crashes = Crashes()

    def on_signal(*_: object) -> None:
        stop.set()
        for proc in child:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    first = True
    while not stop.is_set():
        pid = holder(history)
        if pid is not None:
            if first and not stand_by:  # at start only: a kernel it handed over to is no reason
                print(f"fm worker: history {history} is in use by process {pid}; that kernel "
                      "already runs its flows", file=sys.stderr)
                return FAILED
            print(f"fm worker: {history} is held by process {pid}; standing by, taking it "
                  "when that process lets go", file=sys.stderr, flush=True)
            if not wait_free(history, stop, kept):
                break
        first = False
        proc = subprocess.Popen([sys.executable, "-m", "fm_kernel.cli.worker", str(history),
                                 str(os.getpid())], stdin=subprocess.PIPE, text=True)
        child[:] = [proc]
        _hand_token(proc, kept.token)
        if stop.is_set():  # a signal between the look and the start
            proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = _serving(proc, history, kept)
        child.clear()
        if code == RELEASED:
            wait_taken(history, stop, kept)
        elif code == STOPPED:  # stopped by our SIGTERM, or by someone's to it
            return 0
        elif code != HELD:
            if stop.is_set():
                return FAILED
            pause = crashes.died(proc.pid, code, time.monotonic() - started)
            if pause is None:
                return FAILED
            stop.wait(pause)
    return 0


class Crashes:
    """Serving processes that died on their own: each is told in one line,
    and the next one starts after a pause that grows with the deaths in the
    last CRASH_WINDOW_S, until CRASHES_ALLOWED of them say it cannot stay up."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def died(self, pid: int, code: int, lived_s: float) -> float | None:
        """The pause before the next serving process, or None: give up."""
        now = time.monotonic()
        self.times.append(now)
        while now - self.times[0] > CRASH_WINDOW_S:
            self.times.popleft()
        how = _how(code)
        if len(self.times) >= CRASHES_ALLOWED:
            print(f"fm worker: giving up: the serving process died {len(self.times)} times "
                  f"within {CRASH_WINDOW_S:.0f} s (the last, process {pid}, {how} after "
                  f"{lived_s:.1f} s); the lines above say why. Nothing serves this history now",
                  file=sys.stderr, flush=True)
            return None
        pause = BACKOFF_S[min(len(self.times), len(BACKOFF_S)) - 1]
        print(f"fm worker: the serving process {pid} {how} after {lived_s:.1f} s; starting "
              f"another in {pause:g} s, which resumes its pending runs and schedules "
              f"({len(self.times)} death(s) within {CRASH_WINDOW_S:.0f} s; at {CRASHES_ALLOWED} "
              "the worker gives up)", file=sys.stderr, flush=True)
        return pause


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited {code}"


class Kept:
    """The endpoint token of the history's last holder: the worker serves with
    it again, so a sender's token survives hand-overs both ways."""

    token: str | None = None

    def look(self, history: Path, pid: int | None) -> None:
        info = endpoint_of(history, pid)
        if info is not None and isinstance(info.get("token"), str):
            self.token = info["token"]


def _serving(proc: subprocess.Popen, history: Path, kept: Kept) -> int:
    """Wait for the serving process to end, learning its token meanwhile."""
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            kept.look(history, proc.pid)


def _hand_token(proc: subprocess.Popen, token: str | None) -> None:
    # through a pipe, not the environment: flows' subprocesses inherit that
    assert proc.stdin is not None
    try:
        proc.stdin.write((token or "") + "\n")
        proc.stdin.close()
    except OSError:  # it died at once: its exit code says why
        pass


def wait_free(history: Path, stop: threading.Event, kept: Kept) -> bool:
    """Until nobody has held the history for GRACE_S (True), or ``stop`` (False)."""
    free_since: float | None = None
    last: int | None = None
    while not stop.wait(POLL_S):
        pid = holder(history)
        last = pid or last
        kept.look(history, last)  # a holder killed -9 leaves its file: still its token
        if pid is not None:
            free_since = None
        elif free_since is None:
            free_since = time.monotonic()
        elif time.monotonic() - free_since >= GRACE_S:
            return True
    return False


def wait_taken(history: Path, stop: threading.Event, kept: Kept) -> None:
    """After a release, let the kernel that asked take the lock first: the
    worker comes back only once it was taken and let go (wait_free), or if
    nobody took it within TAKEN_WAIT_S."""
    deadline = time.monotonic() + TAKEN_WAIT_S
    before = _stamp(history)
    while time.monotonic() < deadline and not stop.wait(0.05):
        pid = holder(history)
        if pid is not None:
            kept.look(history, pid)
            return
        if _stamp(history) != before:  # taken and let go between two looks
            return


def _stamp(history: Path) -> tuple:
    """What changes when anyone opens the history and writes (its files' times and sizes)."""
    out = []
    for suffix in ("", ".wal", ".steplog", ".flowlog"):
        try:
            st = os.stat(str(history) + suffix)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)
