"""Talking to the live kernel that holds a history, through its endpoint.

DuckDB lets one process open a file, even read-only, so while a kernel runs
the CLI asks that kernel. An endpoint file whose process is gone is stale."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..endpoint import endpoint_file
from ..errors import HistoryError, UsageError
from ..http_client import Patience, send


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
    """The kernel's JSON answer. A hand-over (cli/handover.py) answers 503,
    then refuses connections until the next holder serves the same port:
    both are retried for up to ``timeout`` s (neither was applied); a
    connection cut or timed out is not (a signal sent twice is two).
    Anything else refused is a UsageError."""
    try:
        answer = send((info["url"], info["token"]), method, path, body, timeout=timeout,
                      patience=Patience(for_s=timeout, refused=True))
    except OSError as exc:
        raise HistoryError(f"the kernel holding this history did not answer at {info['url']}: "
                           f"{exc}") from None
    if answer.status >= 400:
        raise UsageError(cli_wording(answer.error()))
    return answer.body
