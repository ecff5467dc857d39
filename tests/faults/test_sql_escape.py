"""User SQL cannot leave the history: escape attempts through all four doors.

Each attempt in ATTACKS is refused by the parser allow-list (querying.check)
in process, and a representative subset through a real kernel's `%%sql`,
`fm.history().sql`, `fm sql` (live through the endpoint, and opening the file
itself) and POST /sql. After each: no file was read (every path an attack
names is a FIFO whose writer notices any reader), none was written (the
output folder stays empty), no setting of the kernel's own connection
changed, and the next cell is still recorded with `frame()` working. The
second wall is tried on its own: the locked instance refuses the dangerous
ones even when the parser check is skipped. Then the time limit, the row
cap, cancellation on a dropped client and on interrupt, while callbacks and
cells are answered meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel  # noqa: E402

from fm_kernel.errors import QueryFailed, SQLError  # noqa: E402
from fm_kernel.record import querying  # noqa: E402
from fm_kernel.record.sandbox import run_isolated  # noqa: E402
from fm_kernel.record.store import Store  # noqa: E402

FM = str(Path(sys.executable).parent / "fm")
SLOW = ("SELECT count(*) FROM range(1000000000) a, range(1000000) b "
        "WHERE a.range + b.range = -1")

# {canary}: a FIFO that records whether anything opened it; {out}: a folder
# that must stay empty; {dir}: the folder holding both.
ATTACKS: list[tuple[str, str]] = [
    ("explain", "EXPLAIN SELECT 1"),
    ("explain-analyze-copy", "EXPLAIN ANALYZE COPY (SELECT 'import os') TO '{out}/a.py' (FORMAT csv)"),
    ("explain-analyze-set", "EXPLAIN ANALYZE SET GLOBAL memory_limit='4MB'"),
    ("explain-read", "explain analyze select * from read_text('{canary}')"),
    ("call-comment", "CALL read_text/**/('{canary}')"),
    ("call-glob", "CALL glob('{dir}/*')"),
    ("call-quoted", 'call "read_text"(\'{canary}\')'),
    ("call-case", "CaLl ReAd_CsV('{canary}')"),
    ("call-pragma-fn", "CALL/**/pragma_version()"),
    ("pragma-version", "PRAGMA version"),
    ("pragma-table-info", "PRAGMA table_info('steps')"),
    ("pragma-profiling", "PRAGMA enable_profiling"),
    ("pragma-memory", "PRAGMA memory_limit='4MB'"),
    ("set-global-memory", "SET GLOBAL memory_limit='4MB'"),
    ("set-memory", "SET memory_limit = '4MB'"),
    ("set-external-access", "SET GLOBAL enable_external_access=false"),
    ("reset-global", "RESET GLOBAL memory_limit"),
    ("reset-threads", "RESET threads"),
    ("set-variable", "SET VARIABLE p = '{canary}'"),
    ("attach-new", "ATTACH '{out}/x.duckdb' AS x"),
    ("attach-canary", "ATTACH '{canary}' AS c (READ_ONLY)"),
    ("detach", "DETACH fm_copy"),
    ("use", "USE system"),
    ("copy-view", "COPY steps TO '{out}/steps.csv'"),
    ("copy-query", "COPY (SELECT 1) TO '{out}/b.py'"),
    ("copy-from", "COPY fm_events FROM '{canary}'"),
    ("export", "EXPORT DATABASE '{out}/dump'"),
    ("import", "IMPORT DATABASE '{dir}'"),
    ("create-macro", "CREATE MACRO m() AS 1"),
    ("create-table-macro", "CREATE TEMP MACRO rt(p) AS TABLE SELECT * FROM read_text(p)"),
    ("create-view", "CREATE VIEW v AS SELECT 1"),
    ("load", "LOAD httpfs"),
    ("install", "INSTALL httpfs"),
    ("checkpoint", "CHECKPOINT"),
    ("begin", "BEGIN TRANSACTION"),
    ("prepare", "PREPARE p AS SELECT 1"),
    ("delete", "DELETE FROM fm_events"),
    ("update", "UPDATE fm_meta SET value = 'x'"),
    ("insert", "INSERT INTO fm_meta VALUES ('a', 'b')"),
    ("drop", "DROP VIEW steps"),
    ("current-setting", "SELECT current_setting('memory_limit')"),
    ("duckdb-settings", "SELECT * FROM duckdb_settings()"),
    ("from-duckdb-settings", "FROM duckdb_settings()"),
    ("getenv", "SELECT getenv('HOME')"),
    ("read-text", "SELECT * FROM read_text('{canary}')"),
    ("read-text-list", "SELECT * FROM read_text(['{canary}'])"),
    ("read-text-spaced", "select/**/*/**/from/**/Read_Text  ('{canary}')"),
    ("read-text-qualified", 'SELECT * FROM "system"."main"."read_text"(\'{canary}\')'),
    ("read-csv", "SELECT * FROM read_csv('{canary}')"),
    ("read-parquet", "SELECT * FROM read_parquet('{canary}')"),
    ("read-json", "SELECT * FROM read_json('{canary}')"),
    ("read-blob", "SELECT * FROM read_blob('{canary}')"),
    ("glob", "SELECT * FROM glob('{dir}/*')"),
    ("sniff-csv", "SELECT * FROM sniff_csv('{canary}')"),
    ("parquet-metadata", "SELECT * FROM parquet_metadata('{canary}')"),
    ("replacement-scan", "SELECT * FROM '{canary}'"),
    ("replacement-ident", 'SELECT * FROM "{canary}"'),
    ("two-statements", "SELECT 1; SELECT 2"),
    ("select-then-copy", "SELECT 1; COPY (SELECT 1) TO '{out}/c.py'"),
    ("select-then-set", "SELECT * FROM steps; SET GLOBAL memory_limit='4MB'"),
    ("query-fn", "SELECT * FROM query('SELECT * FROM read_text(''{canary}'')')"),
    ("query-table", "SELECT * FROM query_table('fm_events')"),
    ("execute-serialized", "SELECT json_execute_serialized_sql(json_serialize_sql('SELECT 1'))"),
    ("serialize-plan", "SELECT json_serialize_plan('SELECT * FROM read_text(''{canary}'')')"),
    ("base-table", "SELECT * FROM fm_events"),
    ("qualified-view", "SELECT * FROM main.steps"),
    ("time-travel", "SELECT * FROM steps AT (VERSION => 1)"),
    ("describe-read", "DESCRIBE SELECT * FROM read_text('{canary}')"),
    ("summarize", "SUMMARIZE steps"),
    ("show-tables", "SHOW ALL TABLES"),
    ("cte-read", "WITH x AS (SELECT * FROM read_text('{canary}')) SELECT * FROM x"),
    ("scalar-subquery-read", "SELECT (SELECT content FROM read_text('{canary}'))"),
    ("in-subquery-read", "SELECT * FROM steps WHERE code IN (SELECT content FROM read_text('{canary}'))"),
    ("cte-scope", "SELECT x FROM (WITH duckdb_settings AS (SELECT 1 x) SELECT * FROM duckdb_settings), "
                  "duckdb_settings"),
    ("lambda-setting", "SELECT list_transform([1], x -> current_setting('memory_limit'))"),
    ("frame-and-read", "SELECT * FROM frame('df', 1), read_text('{canary}')"),
    ("frame-subquery", "SELECT * FROM frame((SELECT content FROM read_text('{canary}')), 1)"),
    ("nextval", "SELECT nextval('s')"),
    ("setseed", "SELECT setseed(0.5)"),
    ("write-log", "SELECT write_log('x')"),
    ("secrets", "SELECT * FROM duckdb_secrets()"),
    ("database-size", "SELECT * FROM pragma_database_size()"),
    ("pivot", "PIVOT steps ON status USING count(*)"),
]
# Through the real kernel's doors: one of each class.
DOOR_SUBSET = ["explain-analyze-copy", "call-comment", "call-glob", "pragma-table-info",
               "explain-analyze-set", "set-external-access", "reset-global", "attach-new",
               "copy-view", "export", "create-macro", "current-setting", "duckdb-settings",
               "read-text", "replacement-scan", "select-then-copy", "getenv", "query-fn"]
# Dangerous if they ran: the second wall must refuse them with the parser check skipped.
WALL2 = ["explain-analyze-copy", "explain-analyze-set", "explain-read", "call-comment",
         "call-glob", "set-global-memory", "set-external-access", "reset-global", "attach-new",
         "attach-canary", "copy-view", "copy-query", "export", "load", "read-text",
         "read-csv", "read-parquet", "read-json", "read-blob", "glob", "replacement-scan",
         "cte-read", "create-macro"]


class Canary:
    """A FIFO at a path attacks name: opening it to read releases the writer
    thread, which records it, so a read is seen even if nothing is returned."""

    def __init__(self, path: Path):
        self.path = path
        os.mkfifo(path, 0o600)
        self.opened = threading.Event()
        self._closing = False
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until someone opens it for reading
        if not self._closing:
            self.opened.set()
        try:
            os.write(fd, b"CANARY-SECRET\n")
        except OSError:
            pass
        os.close(fd)

    def close(self) -> None:
        self._closing = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        time.sleep(0.05)
        os.close(fd)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("escape")
    (root / "out").mkdir()
    canary = Canary(root / "canary.txt")
    yield root, canary
    canary.close()


def attack(name: str, root: Path) -> str:
    sql = dict(ATTACKS)[name]
    return sql.format(canary=root / "canary.txt", out=root / "out", dir=root)


def assert_untouched(root: Path, canary: Canary, said: str) -> None:
    assert not canary.opened.is_set(), f"the canary was opened: {said}"
    assert "CANARY-SECRET" not in said
    assert list((root / "out").iterdir()) == [], f"a file was written: {said}"
    assert sorted(p.name for p in root.iterdir()) == ["canary.txt", "out"], f"a file was written: {said}"


def settings(store: Store) -> tuple:
    return store.query("SELECT current_setting('memory_limit'), current_setting('enable_external_access'),"
                       " current_setting('lock_configuration')").rows[0]


@pytest.fixture(scope="module")
def store(place):
    root, _ = place
    s = Store.open(root.parent / f"{root.name}-direct" / "h.duckdb")
    s.append_event("kernel_started", payload={"kernel_id": "t"})
    yield s
    s.close()


def test_there_are_at_least_forty_attacks() -> None:
    assert len(ATTACKS) >= 40 and len(dict(ATTACKS)) == len(ATTACKS)


@pytest.mark.parametrize("name", [n for n, _ in ATTACKS])
def test_refused_in_process(name: str, place, store: Store) -> None:
    root, canary = place
    before = settings(store)
    with pytest.raises(SQLError) as err:
        querying.run(store, attack(name, root), frames=lambda n, s: root / "canary.txt")
    said = str(err.value)
    assert "refused" in said and "\n" not in said, said
    assert_untouched(root, canary, said)
    assert settings(store) == before and before[1:] == (True, False), before
    store.append_event("after_attack", payload={"name": name})  # the history still writes
    assert querying.run(store, "SELECT count(*) FROM events WHERE kind = 'after_attack'").rows[0][0] >= 1


@pytest.mark.parametrize("name", WALL2)
def test_second_wall_refuses_without_the_parser_check(name: str, place, store: Store) -> None:
    root, canary = place
    before = settings(store)
    views = store.views_as_arrow(["steps", "events"])
    with pytest.raises(QueryFailed) as err:
        run_isolated(attack(name, root), [], views, {}, None, querying.Cancel())
    said = err.value.message
    assert any(w in said for w in ("disabled by configuration", "configuration has been locked",
                                   "read-only", "Permission", "does not exist")), said
    assert_untouched(root, canary, said)
    assert settings(store) == before
    # the locked instance's own settings did not move either
    inner = run_isolated("SELECT current_setting('memory_limit'), current_setting('enable_external_access')",
                         [], {}, {}, None, querying.Cancel()).rows[0]
    assert inner[1] is False or inner[1] == "false", inner
    assert inner[0] != "3.8 MiB"


def test_views_and_frames_still_answer_in_process(store: Store, tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "df.parquet"
    pd.DataFrame({"k": [1, 2], "v": [10.0, 20.0]}).to_parquet(path)
    res = querying.run(store, "WITH e AS (SELECT kind FROM events) SELECT f.k, f.v, "
                       "(SELECT count(*) FROM e) > 0 AS any FROM frame('df', 1) f ORDER BY k",
                       frames=lambda n, s: path)
    assert res.rows == [(1, 10.0, True), (2, 20.0, True)]
    typed = querying.run(store, "SELECT typeof(payload) FROM events LIMIT 1").rows[0][0]
    assert typed == "JSON"  # the Arrow hand-over keeps the views' types
    capped = querying.run(store, "SELECT * FROM range(100)", limit_rows=7)
    assert len(capped.rows) == 7 and capped.truncated and "truncated" in querying.truncated_note(capped)


def test_only_named_columns_are_handed_over_and_every_shape_still_answers(store: Store) -> None:
    n = querying.run(store, "SELECT count(*) FROM events").rows[0][0]
    assert n >= 1
    assert querying.check("SELECT count(*) FROM events").columns() == set()
    assert querying.check("SELECT kind FROM events WHERE step IS NULL").columns() == {"kind", "step"}
    for sql in ("SELECT * FROM events", "SELECT e FROM events e", "SELECT events FROM events",
                "SELECT kind FROM events NATURAL JOIN events"):
        assert querying.check(sql).columns() is None, sql
    row = querying.run(store, "SELECT e FROM events e ORDER BY seq LIMIT 1").rows[0][0]
    assert {"seq", "at", "kind", "step", "run_id", "payload"} <= set(row), row
    assert querying.run(store, "SELECT count(*) FROM (SELECT seq, kind FROM events) NATURAL JOIN "
                        "events").rows[0][0] == n
    assert querying.run(store, "SELECT count(a.kind) FROM events a JOIN events b USING (seq)"
                        ).rows[0][0] == n
    assert querying.run(store, "SELECT events.kind FROM events ORDER BY seq LIMIT 1").rows[0][0] \
        == "kernel_started"
    assert querying.run(store, "SELECT * EXCLUDE (payload) FROM events LIMIT 1").columns == \
        ["seq", "at", "kind", "step", "run_id"]


@pytest.mark.parametrize("limit", [0.001, 0.05, 0.5])
def test_the_time_limit_holds_even_when_it_fires_before_duckdb_starts(store: Store, limit: float) -> None:
    # DuckDB forgets an interrupt that comes before a statement starts; a
    # 1 ms limit fires while the views are still being handed over.
    t0 = time.monotonic()
    with pytest.raises(SQLError) as err:
        querying.run(store, "SELECT count(*) FROM events, " + SLOW.split("FROM ", 1)[1], timeout=limit)
    assert f"cancelled after {limit:g} s (FM_SQL_TIMEOUT)" in str(err.value)
    assert time.monotonic() - t0 < limit + 2.0
    assert querying.run(store, "SELECT 1").rows == [(1,)]


# -- the real kernel's doors ---------------------------------------------------


@pytest.fixture(scope="module")
def live(place):
    root, _ = place
    path = root.parent / f"{root.name}-live" / "h.duckdb"
    env = {"FM_HISTORY": str(path), "FM_SQL_TIMEOUT": "4", "FM_SQL_MAX_ROWS": "50"}
    with Kernel(env=env) as k:
        ok(k, "import pandas as pd\nimport fm_kernel as fm\ndf = pd.DataFrame({'k': [1, 2], 'v': [1.0, 2.0]})")
        k.path = path  # type: ignore[attr-defined]
        k.info = json.loads(Path(str(path) + ".endpoint.json").read_text())  # type: ignore[attr-defined]
        yield k


def ok(k: Kernel, code: str) -> str:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content, r.text())
    return r.text()


def post_sql(info: dict, query: str, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(info["url"] + "/sql", data=json.dumps({"query": query}).encode(),
                                 method="POST", headers={"Authorization": f"token {info['token']}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def fm_sql(history: Path, query: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    return subprocess.run([FM, "sql", query, "--history", str(history)], capture_output=True,
                          text=True, env=env, timeout=60)


def kernel_state(k: Kernel) -> tuple[str, int]:
    """The kernel connection's settings, and how many steps are recorded."""
    out = ok(k, "from fm_kernel import runtime as _rt\n"
                "print(_rt.current().require_store().query(\"SELECT current_setting('memory_limit'),"
                " current_setting('enable_external_access')\").rows[0])\n"
                "print(len(fm.history().sql('SELECT step FROM steps')))")
    first, second = out.strip().splitlines()
    return first, int(second)


def test_refused_through_every_door_of_a_live_kernel(live: Kernel, place) -> None:
    root, canary = place
    cold = root.parent / f"{root.name}-cold" / "h.duckdb"  # a history no process holds
    Store.open(cold).close()
    settings_before, steps_before = kernel_state(live)
    said: list[str] = []
    for name in DOOR_SUBSET:
        q = attack(name, root)
        r = live.execute("%%sql\n" + q)  # %%sql
        said.append(r.text() + json.dumps(r.content))
        assert r.status == "error" and "refused" in r.content.get("evalue", ""), (name, r.content)
        code, body = post_sql(live.info, q)  # type: ignore[attr-defined]  # POST /sql
        said.append(json.dumps(body))
        assert code == 400 and "refused" in body["error"], (name, code, body)
    r = live.execute("import json as _j\nfrom fm_kernel.errors import SQLError as _SQLError\n"
                     "_said = []\nfor _q in %r:\n"
                     "    try:\n        fm.history().sql(_q)\n        _said.append('ACCEPTED ' + _q)\n"
                     "    except _SQLError as e:\n        _said.append(str(e))\n"
                     "print(_j.dumps(_said))" % [attack(n, root) for n in DOOR_SUBSET])
    api = json.loads(r.text())  # fm.history().sql
    assert len(api) == len(DOOR_SUBSET) and all("refused" in m for m in api), api
    said += api
    for name in DOOR_SUBSET[:8]:  # fm sql: live (through the endpoint) and on a file nobody holds
        for history in (live.path, cold):  # type: ignore[attr-defined]
            out = fm_sql(history, attack(name, root))
            said.append(out.stdout + out.stderr)
            assert out.returncode == 1 and "refused" in out.stderr and out.stderr.count("\n") == 1, \
                (name, history, out.stderr)
    assert_untouched(root, canary, "\n".join(said))
    settings_after, steps_after = kernel_state(live)
    assert settings_after == settings_before and "true" in settings_after.lower(), settings_after
    assert steps_after > steps_before  # the next cells were recorded
    ok(live, "df2 = df.assign(w=df.v * 2)")  # frame() needs the kernel's own file access
    assert "6.0" in ok(live, "_s = int(fm.history().sql(\"SELECT max(step) AS m FROM variables "
                             "WHERE name = 'df2'\").m[0])\n"
                             "print(fm.history().sql(f\"SELECT sum(w) AS s FROM frame('df2', {_s})\").s[0])")


def test_slow_queries_time_out_while_callbacks_and_cells_are_answered(live: Kernel) -> None:
    info = live.info  # type: ignore[attr-defined]
    ok(live, "cb_urls = []\n@fm.flow\ndef approve():\n    cb = fm.callback()\n    cb_urls.append(cb.url)\n"
             "    return cb.wait(timeout=60)\nrun = approve.start()\n"
             "import time\nwhile not cb_urls: time.sleep(0.02)")
    url = ok(live, "print(cb_urls[0])").strip()
    t0 = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(post_sql, info, SLOW) for _ in range(3)]
        time.sleep(0.5)
        t1 = time.monotonic()
        req = urllib.request.Request(url, data=b'{"ok": true}', method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        callback_s = time.monotonic() - t1
        t2 = time.monotonic()
        assert ok(live, "print(1 + 1)").strip() == "2"
        cell_s = time.monotonic() - t2
        answers = [f.result(timeout=60) for f in slow]
    assert callback_s < 1.0 and cell_s < 1.0, (callback_s, cell_s)
    for code, body in answers:
        assert code == 400 and "cancelled after 4 s (FM_SQL_TIMEOUT)" in body["error"], body
    # two workers: the third waited for one, then had its own 4 s
    assert time.monotonic() - t0 < 4 * 2 + 5
    ok(live, "assert run.result(10) == {'ok': True}, run.result()")
    # %%sql itself: cancelled in the kernel while the endpoint still answers
    msg = live.kc.execute("%%sql\n" + SLOW)
    time.sleep(0.5)
    t3 = time.monotonic()
    code, body = post_sql(info, "SELECT 1 AS one")
    assert code == 200 and body["rows"] == [[1]] and time.monotonic() - t3 < 1.0
    r = live.collect(msg, timeout=30)
    assert r.status == "error" and "cancelled after 4 s" in r.content["evalue"], r.content


def test_a_dropped_client_and_an_interrupt_stop_their_query(live: Kernel) -> None:
    info = live.info  # type: ignore[attr-defined]
    with ThreadPoolExecutor(2) as pool:
        gone = [pool.submit(post_sql, info, SLOW, 0.5) for _ in range(2)]  # both workers
        for f in gone:
            with pytest.raises(Exception):
                f.result(timeout=10)
    t0 = time.monotonic()
    code, body = post_sql(info, "SELECT 2 AS two")  # a worker is free well before the 4 s limit
    assert code == 200 and body["rows"] == [[2]]
    assert time.monotonic() - t0 < 2.5, time.monotonic() - t0
    msg = live.kc.execute("%%sql\n" + SLOW)
    time.sleep(0.5)
    t1 = time.monotonic()
    live.km.interrupt_kernel()
    r = live.collect(msg, timeout=30)
    assert time.monotonic() - t1 < 2.0 and r.status == "error", r.content
    assert r.content["ename"] == "KeyboardInterrupt", r.content
    assert ok(live, "print('alive')").strip() == "alive"


def test_rows_are_capped_for_frontend_and_endpoint_only(live: Kernel) -> None:
    code, body = post_sql(live.info, "SELECT * FROM range(1000) t(x)")  # type: ignore[attr-defined]
    assert code == 200 and len(body["rows"]) == 50 and body["truncated"] is True
    assert "truncated" in body["note"] and "FM_SQL_MAX_ROWS" in body["note"]
    r = live.execute("%sql SELECT * FROM range(1000) t(x)")
    assert r.status == "ok" and "truncated: showing the first 50 rows" in r.text(), r.text()
    out = fm_sql(live.path, "SELECT * FROM range(1000) t(x)")  # type: ignore[attr-defined]
    assert out.returncode == 0 and "truncated" in out.stderr
    assert ok(live, "print(len(fm.history().sql('SELECT * FROM range(1000)')))").strip() == "1000"
    ok(live, "%%sql -o allrows\nSELECT * FROM range(1000)")
    assert ok(live, "print(len(allrows))").strip() == "1000"
