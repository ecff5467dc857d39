"""The one HTTP client the product's own callers of an endpoint use (the `fm`
commands in cli/remote.py, a kernel asking `fm worker` for its history in
record/handover.py, the task worker in cli/task_worker.py): what is retried,
how long to wait between tries, and for how long in all. Stdlib only, so
any layer may use it.

An endpoint is away for a few seconds while a history is handed between
`fm worker` and a kernel, or while a kernel restarts on it
(docs/reliability.md, "One writer at a time"). What a caller meets then, and
what this module does with it:

- **503**: the holder is letting go, or the next one is still restoring its
  flows. The request was not applied: it is sent again after the answer's
  ``Retry-After`` (capped at ``Patience.most_s``; the growing backoff when
  there is none).
- **a refused connection**: between the old holder's socket closing and
  the new one's opening on the kept port. The request reached no one, so
  it is sent again with backoff when the caller asks (``Patience.refused``;
  the `fm` commands do: a hand-over's 503s are followed by that gap).
- **any other lack of an answer** (a connection reset or cut, a timeout, no
  endpoint file yet): the request may have been applied, so it is sent
  again only by a caller whose requests are safe to repeat
  (``Patience.unanswered``; the task worker's: a completion sent twice is
  answered "duplicate").
- **401** to a caller that reads its address from the history's endpoint
  file (``renew`` given): a restarted kernel made a new token, so the file
  is read again and the request sent with the new one, a few times at most.
- **Any other answer**, 4xx included, is the caller's: the request reached
  the holder and was refused for what it said, and would be again.

Each retry is one log line on the caller's logger, when it gives one.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

RENEWS = 5  # 401s answered by reading the endpoint file again, per request


@dataclass(frozen=True)
class Patience:
    """How one caller retries an endpoint that is away."""

    for_s: float | None = 60.0  # give up after this long in all; None: until it answers
    refused: bool = False  # also retry refused connections (never applied)
    unanswered: bool = False  # and any other lack of an answer (perhaps applied)
    first_s: float = 0.1  # the backoff's first pause, doubled after each retry ...
    most_s: float = 5.0  # ... up to this; also caps what a Retry-After asks for
    log: logging.Logger | None = None  # one line per retry, at INFO


class Answer(NamedTuple):
    """The endpoint's answer: its status, its JSON body (text if not JSON,
    None if empty), its reason phrase and its Retry-After header."""

    status: int
    body: Any
    reason: str = ""
    retry_after: str | None = None

    def error(self) -> str:
        """What the endpoint said was wrong: its ``error``, else the reason."""
        said = self.body.get("error") if isinstance(self.body, dict) else self.body
        return str(said or self.reason or self.status)


Where = Callable[[], "tuple[str, str]"]  # (base URL, token), asked before each try


def send(where: Where | tuple[str, str], method: str, path: str, body: Any = None, *,
         timeout: float = 30.0, patience: Patience = Patience(),
         renew: Callable[[], None] | None = None) -> Answer:
    """``method path`` with ``body`` as JSON, retried as the module docstring
    says; the first answer that is not retried, or the last one when
    ``patience`` ran out. Raises the last OSError when no answer came (at
    once unless ``patience`` allows a retry); ``renew()`` is called before each
    retry so that ``where`` reads the address again."""
    address = where if callable(where) else (lambda: where)
    data = None if body is None else json.dumps(body).encode()
    deadline = None if patience.for_s is None else time.monotonic() + patience.for_s
    backoff, renewed = patience.first_s, 0
    while True:
        try:
            url, token = address()
            answer = _once(url + path, method, data, token, timeout)
        except OSError as exc:  # urllib's errors and a missing endpoint file alike
            if not (patience.unanswered or patience.refused and _never_sent(exc)) \
                    or _past(deadline):
                raise
            wait, why = backoff, f"did not answer ({_reason(exc)})"
        else:
            renewed += answer.status == 401 and renew is not None
            if not (answer.status == 503 or answer.status == 401 and 0 < renewed <= RENEWS) \
                    or _past(deadline):
                return answer
            wait = _retry_after(answer, backoff, patience.most_s)
            why = f"answered {answer.status} ({answer.error()})"
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        if patience.log is not None:
            patience.log.info("%s %s %s; again in %.1f s", method, path, why, wait)
        if renew is not None:
            renew()
        time.sleep(wait)
        backoff = min(backoff * 2, patience.most_s)


def _once(url: str, method: str, data: bytes | None, token: str, timeout: float) -> Answer:
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, _json(resp.read()), resp.reason or "")
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, _json(exc.read()), str(exc.reason or ""),
                      exc.headers.get("Retry-After") if exc.headers else None)


def _retry_after(answer: Answer, backoff: float, most: float) -> float:
    try:
        wait = float(answer.retry_after) if answer.retry_after else backoff
    except ValueError:  # an HTTP date, or garbage: our own endpoints send seconds
        wait = backoff
    return min(max(wait, 0.0), most)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _never_sent(exc: OSError) -> bool:
    """A refused connection: the request reached no one."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ConnectionRefusedError)


def _reason(exc: OSError) -> str:
    return str(exc.reason) if isinstance(exc, urllib.error.URLError) else str(exc)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")
