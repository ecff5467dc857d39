"""User SQL over the history: what it may do, `frame(name, step)`, and
errors as one line. Shared by `%%sql`, `fm.history().sql()`, the endpoint's
POST /sql and `fm sql`, so all four accept and refuse the same things."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import QueryFailed, SQLError, UsageError
from .store import Result, Store, parse_tree, statement_types

# Read-only transactions refuse writes to the history; these are refused
# before that because they reach outside it (files, other databases, settings).
ALLOWED = {"SELECT", "EXPLAIN", "PRAGMA", "CALL"}
READ_PRAGMAS = {"table_info", "show_tables", "show_tables_expanded", "database_size",
                "version", "storage_info", "show", "functions", "database_list"}
# Functions that read files or the environment, or run SQL from a string: a
# token for the history's endpoint must not be a token for the filesystem.
OUTSIDE = {"glob", "getenv", "sniff_csv", "query", "query_table", "parquet_metadata",
           "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata",
           "parquet_bloom_probe", "iceberg_metadata", "iceberg_snapshots"}

FRAME_CALL = re.compile(r"\bframe\s*\(\s*'((?:[^']|'')+)'\s*,\s*(\d+)\s*\)", re.IGNORECASE)

FrameResolver = Callable[[str, int], Path]




def check(sql: str) -> None:
    try:
        statements = statement_types(sql)
    except QueryFailed as exc:
        raise SQLError(exc.message) from None
    if not statements:
        raise SQLError("empty query; write a SELECT over steps, outputs, events or branches")
    if len(statements) > 1:
        raise SQLError(f"one statement at a time please ({len(statements)} given)")
    kind = statements[0]
    if kind not in ALLOWED:
        raise SQLError(
            f"the history is read-only: {kind} statements are refused; "
            "query it with SELECT (copy results out with `%%sql -o NAME`)"
        )
    if kind == "PRAGMA":
        name = sql.strip().split(None, 1)[1].split("(")[0].split("=")[0].strip().lower() \
            if len(sql.split()) > 1 else ""
        if name not in READ_PRAGMAS:
            raise SQLError(f"PRAGMA {name} is refused: only PRAGMAs that describe the history are "
                           f"allowed ({', '.join(sorted(READ_PRAGMAS))})")
    else:
        if kind == "CALL" and re.search(r"\b(read_\w+|\w+_scan|glob|getenv|query)\s*\(", sql, re.I):
            raise SQLError("CALL of a function that reads outside the history is refused")
        for what in _references(sql):
            if what in OUTSIDE or what.startswith("read_") or what.endswith("_scan"):
                raise SQLError(f"{what}() is refused: queries see the history's views, not files "
                               "or the environment; frame('df', STEP) reads past DataFrames")
            if what.startswith("table:") and not what[6:].replace("_", "").isalnum():
                raise SQLError(f"{what[6:]!r} is refused: it is not a view of the history and files cannot be read "
                               "from here (views: steps, outputs, variables, branches, events, "
                               "runs, run_steps)")


def _references(sql: str) -> set[str]:
    """Function and table names a query uses, from DuckDB's own parse tree."""
    tree = parse_tree(sql)
    if tree is None:
        return set()
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("function_name"), str):
                found.add(node["function_name"].lower())
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                found.add("table:" + node["table_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


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
    except QueryFailed as exc:
        if exc.wrote:
            raise SQLError("the history is read-only: this query tried to write to it") from None
        raise SQLError(exc.message) from None
