"""User SQL over the history: what it may do, `frame(name, step)`, and
errors as one line. Shared by `%%sql`, `fm.history().sql()`, the endpoint's
POST /sql and `fm sql`, so all four accept and refuse the same things."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb

from .errors import UsageError
from .store import Result, Store

# Read-only transactions refuse writes to the history; these are refused
# before that because they reach outside it (files, other databases, settings).
ALLOWED = {"SELECT", "EXPLAIN", "PRAGMA", "CALL"}

FRAME_CALL = re.compile(r"\bframe\s*\(\s*'((?:[^']|'')+)'\s*,\s*(\d+)\s*\)", re.IGNORECASE)

FrameResolver = Callable[[str, int], Path]


class SQLError(UsageError):
    """A query DuckDB rejected, or one that would change the history."""


def check(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLError(one_line(exc)) from None
    if not statements:
        raise SQLError("empty query; write a SELECT over steps, outputs, events or branches")
    if len(statements) > 1:
        raise SQLError(f"one statement at a time please ({len(statements)} given)")
    kind = statements[0].type.name
    if kind not in ALLOWED:
        raise SQLError(
            f"the history is read-only: {kind} statements are refused; "
            "query it with SELECT (copy results out with `%%sql -o NAME`)"
        )


def rewrite_frames(sql: str, resolve: FrameResolver | None) -> str:
    """frame('df', 12) -> read_parquet('<file of df after step 12>')."""
    def sub(m: re.Match[str]) -> str:
        if resolve is None:
            raise SQLError("frame() needs the state history, which this history does not have")
        path = resolve(m.group(1).replace("''", "'"), int(m.group(2)))
        return "read_parquet('" + str(path).replace("'", "''") + "')"
    return FRAME_CALL.sub(sub, sql)


def run(store: Store, sql: str, params: Sequence[Any] = (),
        frames: FrameResolver | None = None) -> Result:
    check(sql)
    sql = rewrite_frames(sql, frames)
    try:
        return store.read_query(sql, params)
    except duckdb.TransactionException as exc:
        if "read-only" in str(exc):
            raise SQLError("the history is read-only: this query tried to write to it") from None
        raise SQLError(one_line(exc)) from None
    except duckdb.Error as exc:
        raise SQLError(one_line(exc)) from None


def one_line(exc: BaseException) -> str:
    """DuckDB's message without its caret diagram: the first line says it."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
