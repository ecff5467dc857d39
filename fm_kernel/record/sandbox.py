"""User SQL's own DuckDB instance, apart from every history's connection,
and DuckDB's parser for the allow-list (record/querying.py). Beside
store.py, the only module that imports duckdb."""

from __future__ import annotations

import json
import threading
from typing import Any, Sequence

import duckdb

from ..errors import QueryFailed
from .refusals import first_line
from .rows import Result

__all__ = ["parse_tree", "run_isolated", "statement_types"]


# -- user SQL's own instance --------------------------------------------------
# User SQL never runs on a history's connection. It runs on a cursor of a
# separate in-memory instance made with external access off (no file, ATTACH,
# COPY or extension loading) and its configuration locked (no SET, RESET or
# PRAGMA can change a setting), inside a read-only transaction. It holds no
# data of its own: the kernel hands it the views a query names as Arrow
# tables (Store.views_as_arrow) and each past DataFrame `frame()` names as an
# Arrow table, so a query sees what it was given and nothing else, whatever
# the parser check (record/querying.py) might miss.
_ISOLATED_CONFIG = {
    "enable_external_access": False, "autoload_known_extensions": False,
    "autoinstall_known_extensions": False, "allow_community_extensions": False,
    "allow_unsigned_extensions": False, "threads": 2, "memory_limit": "1GB",
    "lock_configuration": True,
}
_isolated: duckdb.DuckDBPyConnection | None = None
_isolated_lock = threading.Lock()


def _isolated_cursor() -> duckdb.DuckDBPyConnection:
    global _isolated
    with _isolated_lock:
        if _isolated is None:
            _isolated = duckdb.connect(":memory:", config=dict(_ISOLATED_CONFIG))
        return _isolated.cursor()


def run_isolated(sql: str, params: Sequence[Any] | dict[str, Any], views: dict[str, tuple[Any, list[str]]],
                 frames: dict[str, Any], max_rows: int | None, cancel: Any) -> Result:
    """Run one checked user query on a fresh cursor of the isolated instance.
    ``views``: view name -> (Arrow table, its JSON columns); ``frames``:
    table name -> Arrow table; ``cancel.attach(cursor)`` lets a timer, an
    interrupt or a gone client stop it. Raises QueryFailed."""
    cur = _isolated_cursor()
    try:
        for name, (table, json_cols) in views.items():
            cur.register(f"fm_arrow_{name}", table)
            # Arrow carries JSON as text; give the views back their JSON type.
            casts = ", ".join(f'"{c}"::JSON AS "{c}"' for c in json_cols)
            cur.execute(f'CREATE TEMP VIEW "{name}" AS SELECT *'
                        f'{f" REPLACE ({casts})" if casts else ""} FROM fm_arrow_{name}')
        for name, table in frames.items():
            cur.register(name, table)
        cur.execute("BEGIN TRANSACTION READ ONLY")
        cancel.attach(cur)
        try:
            cur.execute(sql, params if isinstance(params, dict) else list(params))
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = [] if not cols else cur.fetchall() if max_rows is None \
                else cur.fetchmany(max_rows + 1)
        except (duckdb.Error, RuntimeError) as exc:  # Ctrl-C arrives as RuntimeError
            interrupted = isinstance(exc, duckdb.InterruptException) or "interrupted" in str(exc)
            raise QueryFailed("interrupted" if interrupted else first_line(exc),
                              wrote="read-only" in str(exc)) from None
        finally:
            cancel.detach()
        cut = max_rows is not None and len(rows) > max_rows
        return Result(cols, rows[:max_rows] if cut else rows, truncated=cut)
    finally:
        cur.close()


def statement_types(sql: str) -> list[str]:
    """The statement types DuckDB parses ``sql`` into (SELECT, INSERT, ...)."""
    try:
        return [st.type.name for st in duckdb.extract_statements(sql)]
    except duckdb.Error as exc:
        raise QueryFailed(first_line(exc)) from None


_parser: duckdb.DuckDBPyConnection | None = None  # in-memory, only parses
_parser_lock = threading.Lock()


def parse_tree(sql: str) -> Any:
    """DuckDB's own parse tree of a query (json_serialize_sql), or None when
    it cannot serialise it: it serialises nothing but SELECT."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config=dict(_ISOLATED_CONFIG))
        try:
            tree = json.loads(_parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        except duckdb.Error:
            return None
    return None if tree.get("error") else tree
