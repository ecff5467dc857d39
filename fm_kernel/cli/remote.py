"""Talking to the live kernel that holds a history, through its endpoint.

DuckDB lets one process open a file, even read-only, so while a kernel runs
the CLI asks that kernel. An endpoint file whose process is gone is stale."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..endpoint import endpoint_file
from ..errors import HistoryError, UsageError


def live_endpoint(history: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(endpoint_file(history).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


# The kernel's messages name the Python calls a notebook user would type;
# from a shell, the CLI command is what to type.
_CLI_WORDS = (("`fm.runs()` (or `fm runs`)", "`fm runs`"), ("`fm.runs()`", "`fm runs`"))


def cli_wording(message: str) -> str:
    for python, cli in _CLI_WORDS:
        message = message.replace(python, cli)
    return message


def call(info: dict[str, Any], method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(info["url"] + path, data=data, method=method, headers={
        "Authorization": f"token {info['token']}", "Content-Type": "application/json"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _once(req, timeout)
        except urllib.error.HTTPError as exc:
            # 503: the history is being handed over (cli/handover.py); its
            # next holder serves the same port within seconds
            if exc.code != 503 or time.monotonic() >= deadline:
                raise _said(exc) from None
            time.sleep(float(exc.headers.get("Retry-After") or 1))
        except (urllib.error.URLError, OSError) as exc:
            raise HistoryError(f"the kernel holding this history did not answer at {info['url']}: "
                               f"{exc}") from None


def _once(req: urllib.request.Request, timeout: float) -> Any:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _said(exc: urllib.error.HTTPError) -> UsageError:
    try:
        message = json.loads(exc.read()).get("error", exc.reason)
    except ValueError:
        message = exc.reason
    return UsageError(cli_wording(str(message)))
