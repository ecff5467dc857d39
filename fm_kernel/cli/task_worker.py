"""A task worker in Python: ``fm.serve_tasks(queue, fn)`` and ``fm task-worker``.

It speaks only the HTTP protocol of docs/integrations.md ("External tasks"),
the one a curl script speaks, so it runs anywhere that reaches the endpoint:
claim with a long poll, heartbeat while the body runs (when the task asks
for it), then complete with the body's result or fail with its error. What
a script would have to get right by hand is done here once:

- the kernel is away (restarting, or the history being handed between a
  kernel and ``fm worker``): a refused connection or a 503 is retried with
  backoff, and the endpoint file is read again, since the port and token it
  names are kept across restarts and hand-overs;
- a completion refused with 409 (the lease ran out and the task went to
  another worker) is dropped with a log line: the task's result is recorded
  once, by whoever holds its lease;
- a body that raises fails the attempt (retryable unless the exception is
  ``NonRetryable``), so the flow's ``retries`` decide what happens next.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

from ..endpoint import endpoint_file
from ..errors import NonRetryable
from ..http_client import Patience, send

log = logging.getLogger(__name__)

# A worker outlives any kernel restart or hand-over: it waits for the
# endpoint as long as it takes, up to 5 s between tries, a line each time.
PATIENCE = Patience(for_s=None, refused=True, unanswered=True, most_s=5.0, log=log)


class Endpoint:
    """Where to send requests: a URL and token given, or read from a
    history's endpoint file — once, and again only after a request found no
    kernel there (refused, 503, or a token the restarted kernel replaced)."""

    def __init__(self, history: Path | None, url: str | None, token: str | None) -> None:
        if history is None and not (url and token):
            raise ValueError("give a history, or both url and token")
        self.history = history
        self._known = (url, token) if history is None else None

    def address(self) -> tuple[str, str]:
        if self._known is None:
            try:
                info = json.loads(endpoint_file(self.history).read_text())  # type: ignore[arg-type]
                self._known = (info["url"], info["token"])
            except (OSError, ValueError, KeyError) as exc:
                raise ConnectionError(f"no endpoint file for {self.history} yet ({exc})") from None
        return str(self._known[0]), str(self._known[1])

    def _forget(self) -> None:
        if self.history is not None:
            self._known = None

    def post(self, path: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
        """(status, JSON answer); retried until the kernel answers other than
        503 (http_client.py: refused connections too, and a token a restarted
        kernel replaced), however long that takes."""
        answer = send(self.address, "POST", path, body, timeout=timeout, patience=PATIENCE,
                      renew=self._forget if self.history is not None else None)
        return answer.status, answer.body


def serve_tasks(queue: str, fn: Callable[[Any], Any], *, history: str | Path | None = None,
                url: str | None = None, token: str | None = None, worker: str | None = None,
                wait: float = 30.0, stop: threading.Event | None = None,
                max_tasks: int | None = None) -> int:
    """Do the tasks of ``queue`` with ``fn(payload) -> result`` until ``stop``
    is set (or ``max_tasks`` are done); returns how many were completed.
    The endpoint is ``url`` and ``token``, or the one in ``history``'s
    endpoint file (default: the history the ``fm`` command would use here)."""
    if history is None and url is None:
        from ..record.location import history_path

        history = history_path()
    ep = Endpoint(Path(history).expanduser().absolute() if history is not None else None, url, token)
    name = worker or f"{socket.gethostname()}-{os.getpid()}"
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set() and (max_tasks is None or done < max_tasks):
        status, task = ep.post(f"/queues/{queue}/claim", {"worker": name, "wait": wait}, wait + 30)
        if status == 204:
            continue
        if status != 200:
            raise RuntimeError(f"claiming from queue {queue!r} was refused ({status}): "
                               f"{(task or {}).get('error', task)}")
        done += _do(ep, task, fn)
    return done


def _do(ep: Endpoint, task: dict[str, Any], fn: Callable[[Any], Any]) -> int:
    """One claimed task: run it, heartbeating if asked; 1 if its result was recorded."""
    tid, lease = task["task_id"], task["lease"]
    beat = _Heartbeat(ep, tid, lease, task.get("heartbeat"))
    try:
        result = fn(task.get("payload"))
    except Exception as exc:  # the body's failure is the attempt's outcome
        beat.stop()
        body = {"lease": lease, "error": f"{type(exc).__name__}: {exc}",
                "retryable": not isinstance(exc, NonRetryable)}
        status, answer = ep.post(f"/tasks/{tid}/fail", body, 30)
        _said(status, answer, tid, "failure")
        return 0
    beat.stop()
    status, answer = ep.post(f"/tasks/{tid}/complete", {"lease": lease, "result": result}, 30)
    return 1 if _said(status, answer, tid, "result") else 0


def _said(status: int, answer: Any, tid: str, what: str) -> bool:
    if status == 200:
        return True
    # 409: the lease ran out and the task is another worker's now; 404: gone
    log.warning("task %s: %s dropped, not recorded (%d: %s)", tid, what, status,
                (answer or {}).get("error", answer) if isinstance(answer, dict) else answer)
    return False


class _Heartbeat:
    """Extends the lease every half heartbeat interval while the body runs."""

    def __init__(self, ep: Endpoint, tid: str, lease: str, every: float | None) -> None:
        self._stop = threading.Event()
        if every:
            threading.Thread(target=self._beat, args=(ep, tid, lease, float(every) / 2),
                             name=f"fm-heartbeat-{tid[:8]}", daemon=True).start()

    def _beat(self, ep: Endpoint, tid: str, lease: str, every: float) -> None:
        while not self._stop.wait(every):
            status, answer = ep.post(f"/tasks/{tid}/heartbeat", {"lease": lease}, 30)
            if status != 200:
                log.warning("task %s: heartbeat refused (%d): %s", tid, status, answer)
                return

    def stop(self) -> None:
        self._stop.set()


def command_body(argv: list[str]) -> Callable[[Any], Any]:
    """A task body that runs ``argv`` with the payload as JSON on stdin and
    takes its stdout as the JSON result (plain text if it is not JSON); a
    nonzero exit fails the attempt with the command's stderr."""
    def body(payload: Any) -> Any:
        proc = subprocess.run(argv, input=json.dumps(payload), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {tail}")
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return proc.stdout
    return body
