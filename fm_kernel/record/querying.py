"""User SQL over the history: what it may do, `frame(name, step)`, its time
limit and row cap, and errors as one line. Shared by `%%sql`,
`fm.history().sql()`, the endpoint's POST /sql and `fm sql`, so all four
accept and refuse the same things.

Two walls, each enough on its own for what it guards:
1. check(): DuckDB's own parser must see exactly one SELECT (WITH, set
   operations and subqueries included) that it can serialise, and every
   function, table function and table it names must be on an allow-list:
   the functions in sql_allowed, the table functions in TABLE_FUNCTIONS,
   the history's VIEWS and the query's own CTEs.
2. store.run_isolated(): the query runs on a separate DuckDB instance with
   external access off and its configuration locked, in a read-only
   transaction, over Arrow copies of the views it names; it never touches
   the history's connection, whatever the first wall let through.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import QueryFailed, SQLError
from .sql_allowed import FUNCTIONS
from .rows import Result
from .sandbox import parse_tree, run_isolated, statement_types
from .store import Store

# The views of migrations.py: the stable interface, and all a query may read.
VIEWS = frozenset({"steps", "outputs", "variables", "branches", "events", "runs", "run_steps",
                   "tasks", "received_events"})
# Table functions that only make rows from their arguments; `frame` is ours
# and is replaced by a table the kernel hands over before the query runs.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# FROM-clause shapes that name nothing beyond what is checked inside them
# (SHOW_REF, for DESCRIBE/SUMMARIZE/SHOW, lists the instance's catalog).
TABLE_REFS = frozenset({"BASE_TABLE", "TABLE_FUNCTION", "JOIN", "SUBQUERY", "EXPRESSION_LIST",
                        "EMPTY", "PIVOT"})
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_ROWS = 10_000

FRAME_CALL = re.compile(r"\bframe\s*\(\s*'((?:[^']|'')+)'\s*,\s*(\d+)\s*\)", re.IGNORECASE)

FrameResolver = Callable[[str, int], Path]

_VIEW_LIST = ", ".join(sorted(VIEWS))
_WRITE = f"write one SELECT (or WITH … SELECT) over the views ({_VIEW_LIST})"
# What to do instead, by DuckDB statement type; the rest get the generic line.
_INSTEAD = {
    "COPY": "take results out with `%%sql -o NAME` or `fm sql … --format csv > file.csv`",
    "EXPORT": "copy the whole history with `fm export`",
    "SET": "settings belong to the kernel's own connection",
    "VARIABLE_SET": "settings belong to the kernel's own connection",
    "PRAGMA": "settings belong to the kernel; for a view's columns: SELECT * FROM steps LIMIT 0",
    "EXPLAIN": "time a query with %%time instead of EXPLAIN ANALYZE",
    "CALL": "call a table function in FROM: SELECT * FROM range(10)",
    "ATTACH": "a query sees this history's views only; open another with fm.history(PATH)",
    "DETACH": "a query sees this history's views only",
    "LOAD": "extensions cannot be loaded from a query",
    "EXTENSION": "extensions cannot be installed from a query",
    "MULTI": "PIVOT/UNPIVOT statements cannot be checked; use aggregates with FILTER",
}


@dataclass
class Checked:
    """What an accepted query reads: the views it names, its frame() calls,
    and the names its column references use (None: it may need every column,
    as `*`, a NATURAL join, PIVOT or a whole-row reference do)."""

    views: set[str] = field(default_factory=set)
    frames: int = 0
    names: set[str] | None = field(default_factory=set)
    relations: set[str] = field(default_factory=set)  # table names and aliases

    def columns(self) -> set[str] | None:
        """Names of the columns to hand over, or None for all of them."""
        if self.names is None or self.names & self.relations:
            return None
        return self.names


def check(sql: str, extra_tables: frozenset[str] = frozenset()) -> Checked:
    """Accept one SELECT over the views or raise SQLError naming what was refused."""
    try:
        kinds = statement_types(sql)
    except QueryFailed as exc:
        raise SQLError(exc.message) from None
    if not kinds:
        raise SQLError(f"empty query; {_WRITE}")
    if len(kinds) > 1:
        raise SQLError(f"{len(kinds)} statements refused: one at a time please; {_WRITE}")
    if kinds[0] != "SELECT":
        instead = _INSTEAD.get(kinds[0], "the history is the record of what happened")
        raise SQLError(f"the history is read-only: {kinds[0]} statements are refused; "
                       f"{_WRITE}; {instead}")
    tree = parse_tree(sql)
    if tree is None or len(tree.get("statements", ())) != 1:
        raise SQLError(f"this query cannot be checked (DuckDB cannot serialise it); {_WRITE}")
    found = Checked()
    _walk(tree["statements"][0], frozenset(), found, VIEWS | extra_tables)
    return found


def _walk(node: Any, ctes: frozenset[str], found: Checked, tables: frozenset[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, ctes, found, tables)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        # A CTE's name is in scope in its own query node, its body included
        # (WITH RECURSIVE), and nowhere else.
        ctes = ctes | {str(e["key"]).lower() for e in cte_map["map"]}
    if node.get("class") in ("FUNCTION", "WINDOW"):
        _check_function(node)
    elif node.get("class") == "COLUMN_REF" and found.names is not None:
        found.names.update(str(n).lower() for n in node.get("column_names", ()))
    elif node.get("class") == "STAR" or node.get("ref_type") == "NATURAL" \
            or node.get("type") == "PIVOT":
        found.names = None
    elif "class" not in node and "sample" in node and not str(node.get("type")).endswith("_NODE"):
        _check_table_ref(node, ctes, found, tables)
    for key, value in node.items():
        if key != "function" or node.get("type") != "TABLE_FUNCTION":
            _walk(value, ctes, found, tables)
        else:
            _walk(value.get("arguments"), ctes, found, tables)


def _check_function(node: dict[str, Any]) -> None:
    name = str(node.get("function_name", "")).lower()
    if node.get("catalog") or node.get("schema"):
        raise SQLError(f"{_qualified(node)}() is refused: call functions by their plain name")
    if name not in FUNCTIONS:
        raise SQLError(f"{name}() is refused: queries may call DuckDB's functions that compute "
                       "from their arguments, not ones that read files, settings, the "
                       f"environment or other SQL; {_WRITE}")


def _check_table_ref(node: dict[str, Any], ctes: frozenset[str], found: Checked,
                     tables: frozenset[str]) -> None:
    kind = node.get("type")
    found.relations.update(str(node[k]).lower() for k in ("alias", "table_name") if node.get(k))
    if found.names is not None:
        found.names.update(str(c).lower() for c in node.get("using_columns") or ())
    if kind not in TABLE_REFS:
        what = "DESCRIBE, SUMMARIZE and SHOW are" if kind == "SHOW_REF" else f"{kind} is"
        raise SQLError(f"{what} refused; for a view's columns: SELECT * FROM steps LIMIT 0")
    if kind == "BASE_TABLE":
        name = str(node.get("table_name", "")).lower()
        if node.get("catalog_name") or node.get("schema_name") or node.get("at_clause"):
            raise SQLError(f"{'.'.join(node['qualified_name']['path'])!r} is refused: "
                           f"name a view by its plain name; {_WRITE}")
        if name in ctes:
            return
        if name not in tables:
            raise SQLError(f"{node.get('table_name')!r} is refused: it is not a view of the "
                           f"history, and files cannot be read from here; {_WRITE}; "
                           "frame('df', STEP) reads a past DataFrame")
        if name in VIEWS:
            found.views.add(name)
    elif kind == "TABLE_FUNCTION":
        fn = node.get("function") or {}
        name = str(fn.get("function_name", "")).lower()
        if fn.get("catalog") or fn.get("schema"):
            raise SQLError(f"{_qualified(fn)}() is refused: call table functions by their plain name")
        if name == "frame":
            _check_frame_args(fn)
            found.frames += 1
        elif name not in TABLE_FUNCTIONS:
            raise SQLError(f"{name}() is refused: queries see the history's views, not files, "
                           "settings or the catalog; table functions allowed: frame('df', STEP), "
                           f"{', '.join(sorted(TABLE_FUNCTIONS))}")


def _check_frame_args(fn: dict[str, Any]) -> None:
    args = [a.get("expression", {}) for a in fn.get("arguments", [])]
    kinds = [(a.get("literal") or {}).get("kind") for a in args]
    if kinds != ["STRING", "INTEGER"] and kinds != ["STRING", "BIGINT"]:
        raise SQLError("frame() is refused with these arguments: it takes a quoted name and a step "
                       "number, as in frame('df', 12)")


def _qualified(node: dict[str, Any]) -> str:
    path = (node.get("qualified_name") or {}).get("path")
    return ".".join(path) if path else str(node.get("function_name"))


class Cancel:
    """A handle on one running query: cancel() interrupts whichever DuckDB
    connection works for it (the history's cursor while views are handed
    over, then the isolated cursor), from a timer, an interrupt or a server
    whose client went away. DuckDB forgets an interrupt that arrives before
    a statement starts, so cancel() keeps interrupting until run() is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self.reason: str | None = None
        self.done = threading.Event()

    def attach(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            stop = self.reason is not None
        if stop:
            conn.interrupt()

    def detach(self) -> None:
        with self._lock:
            self._conn = None

    def cancel(self, reason: str) -> None:
        """Blocks until the query has stopped: call it from a thread of its own."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
        while not self.done.is_set():
            with self._lock:
                conn = self._conn
            if conn is not None:
                try:
                    conn.interrupt()
                except Exception:  # closed as the query ended; nothing left to stop
                    log.debug("interrupting a finished query", exc_info=True)
            self.done.wait(0.1)

    def cancel_soon(self, reason: str) -> None:
        """cancel() without waiting, for an event loop's thread."""
        threading.Thread(target=self.cancel, args=(reason,), name="fm-sql-cancel",
                         daemon=True).start()


def timeout_s() -> float:
    """FM_SQL_TIMEOUT (seconds, default 30; 0 turns the limit off)."""
    return _env_number("FM_SQL_TIMEOUT", DEFAULT_TIMEOUT)


def max_rows() -> int:
    """FM_SQL_MAX_ROWS: rows a query returns to a frontend or a client (default 10,000)."""
    return int(_env_number("FM_SQL_MAX_ROWS", DEFAULT_MAX_ROWS))


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SQLError(f"{name}={raw!r} is not a number; unset it or give e.g. {default:g}") from None
    if value < 0:
        raise SQLError(f"{name}={raw!r} is negative; give a number of at least 0")
    return value


def truncated_note(res: Result) -> str:
    return (f"truncated: showing the first {len(res.rows):,} rows; narrow the query (WHERE, "
            "LIMIT, GROUP BY) or raise FM_SQL_MAX_ROWS")


def run(store: Store, sql: str, params: Sequence[Any] | dict[str, Any] = (), frames: FrameResolver | None = None,
        limit_rows: int | None = None, cancel: Cancel | None = None,
        timeout: float | None = None) -> Result:
    """Check and run one user query. ``limit_rows`` caps the rows returned
    (Result.truncated says when more were found); ``timeout`` (default
    FM_SQL_TIMEOUT) interrupts it; ``cancel`` lets the caller stop it."""
    checked = check(sql)
    tables = {}
    if checked.frames:
        sql, tables = _hand_over_frames(sql, frames)
        checked = check(sql, frozenset(tables))  # the rewrite is checked like the original
        if checked.frames:
            raise SQLError("frame() is refused with these arguments: it takes a quoted name "
                           "and a step number, as in frame('df', 12)")
    cancel = cancel or Cancel()
    limit = timeout_s() if timeout is None else timeout
    timer = threading.Timer(limit, cancel.cancel, ["timeout"]) if limit > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()

    def execute() -> Result:
        views = store.views_as_arrow(sorted(checked.views), cancel, checked.columns())
        return run_isolated(sql, params, views, tables, limit_rows, cancel)

    try:
        if threading.current_thread() is threading.main_thread():
            return _interruptible(execute, cancel)
        return execute()
    except QueryFailed as exc:
        raise _sql_error(exc, cancel, limit) from None
    finally:
        cancel.done.set()
        if timer is not None:
            timer.cancel()


def _interruptible(execute: Callable[[], Result], cancel: Cancel) -> Result:
    """Run on a helper thread while the main thread waits in short joins, so
    Ctrl-C (a kernel interrupt) lands here at once and stops the query
    instead of waiting for DuckDB to notice the signal."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = execute()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="fm-sql-query", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        cancel.cancel_soon("interrupted")
        worker.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def _sql_error(exc: QueryFailed, cancel: Cancel, limit: float) -> BaseException:
    if cancel.reason == "timeout":
        return SQLError(f"query cancelled after {limit:g} s (FM_SQL_TIMEOUT); narrow it "
                        "(WHERE, LIMIT) or raise FM_SQL_TIMEOUT")
    if cancel.reason == "interrupted" or (cancel.reason is None and exc.message == "interrupted"):
        return KeyboardInterrupt()
    if cancel.reason is not None:
        return SQLError(f"query cancelled: {cancel.reason}")
    if exc.wrote:
        return SQLError("the history is read-only: this query tried to write")
    return SQLError(exc.message)


def _hand_over_frames(sql: str, resolve: FrameResolver | None) -> tuple[str, dict[str, Any]]:
    """frame('df', 12) -> fm_frame_N, an Arrow table the kernel read from
    the Parquet file of df after step 12: the query names no path."""
    import pyarrow.parquet as pq

    tables: dict[str, Any] = {}
    seen: dict[tuple[str, int], str] = {}

    def sub(m: re.Match[str]) -> str:
        if resolve is None:
            raise SQLError("frame() needs the state history, which this history does not have")
        key = (m.group(1).replace("''", "'"), int(m.group(2)))
        if key not in seen:
            path = resolve(*key)
            try:
                tables[f"fm_frame_{len(seen)}"] = pq.read_table(path)
            except (OSError, ValueError) as exc:  # pyarrow's IO and format errors
                raise SQLError(f"frame{key!r}: cannot read {path}: {str(exc).splitlines()[0]}; "
                               f"fm.history().value({key[0]!r}, {key[1]}) loads it as an object"
                               ) from None
            seen[key] = f"fm_frame_{len(seen)}"
        return seen[key]

    return FRAME_CALL.sub(sub, sql), tables


# -- the namespace, for %%sql -------------------------------------------------------------

_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_PARAM = re.compile(r"\$([A-Za-z_]\w*)")
_MISSING_TABLE = re.compile(r"^'([^']+)' is refused: it is not a view of the history")


def namespace_params(sql: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """DuckDB's named parameters (``$since``) bound from ``namespace``, so a
    query can use a Python value without pasting it into the text (no SQL
    injection through a value). A name the namespace lacks is one clear line."""
    names = dict.fromkeys(_PARAM.findall(_QUOTED.sub("''", sql)))
    missing = [n for n in names if n not in namespace]
    if missing:
        raise SQLError(f"${missing[0]} names no variable in the namespace; set it first "
                       f"(e.g. {missing[0]} = 3) or write the value in the query")
    return {n: namespace[n] for n in names}


def live_name_hint(message: str, namespace: dict[str, Any]) -> str | None:
    """When a refused table is a live variable (SELECT * FROM df), say how SQL
    reaches it: the history holds its past values, by step."""
    m = _MISSING_TABLE.match(message)
    if m is None or m.group(1) not in namespace:
        return None
    name = m.group(1)
    return (f"`{name}` is a variable of the live namespace; SQL reads the history, where "
            f"frame('{name}', STEP) is {name} as it was after STEP (`%fm log` lists the steps)")
