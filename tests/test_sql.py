"""SQL over the history, and the loopback endpoint, through a real kernel,
real HTTP requests and the real `fm` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kernel_driver import Kernel

FM = str(Path(sys.executable).parent / "fm")

SESSION = [
    "loss = 1.0\nprint('epoch 0')",
    "import pandas as pd\ndf = pd.DataFrame({'k': [1, 2, 3], 'v': [10.0, 20.0, 30.0]})\ndf",
    "loss = 0.5\nfrom IPython.display import HTML, display\ndisplay(HTML('<i>half</i>'))",
    "df.loc[df.k == 2, 'v'] = 99.0\nloss = 0.25",
    "raise RuntimeError('diverged')",
    "%fm fork tuning",
    "lr = 0.1",
]


def fm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    return subprocess.run([FM, *args], capture_output=True, text=True, env=env, timeout=timeout)


def html_or_text(reply) -> str:
    out = reply.outputs()
    return "".join(m["content"].get("data", {}).get("text/plain", "") for m in out) + reply.text()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = tmp_path_factory.mktemp("sql") / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        for code in SESSION:
            k.execute(code)
        k.path = path  # type: ignore[attr-defined]
        yield k


def sql(k: Kernel, q: str) -> str:
    r = k.execute("%%sql\n" + q)
    assert r.status == "ok", r.text()
    return html_or_text(r)


def test_views_hold_the_scripted_session(session: Kernel) -> None:
    steps = sql(session, "SELECT step, branch, parent, status, error_name FROM steps ORDER BY step")
    assert "diverged" not in steps and "RuntimeError" in steps
    assert "tuning" in steps  # lr = 0.1 ran on the fork
    outputs = sql(session, "SELECT step, output_type, mime FROM outputs ORDER BY step, position")
    for kind in ("stream", "execute_result", "display_data", "error", "text/html"):
        assert kind in outputs
    values = sql(session, "SELECT step, value, changed FROM variables WHERE name = 'loss' ORDER BY step")
    assert "1.0" in values and "0.5" in values and "0.25" in values
    branches = sql(session, "SELECT name, head, base FROM branches ORDER BY name")
    assert "main" in branches and "tuning" in branches
    events = sql(session, "SELECT kind FROM events ORDER BY seq")
    assert "kernel_started" in events and "step_error" in events and "fork" in events
    empty = sql(session, "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM run_steps) AS n")
    assert "0" in empty


def test_changed_marks_only_the_steps_that_wrote_a_name(session: Kernel) -> None:
    session.execute("%%sql -o changed_rows\nSELECT step, changed FROM variables "
                    "WHERE name = 'df' ORDER BY step")
    r = session.execute("print(changed_rows.changed.tolist())")
    assert r.text().strip() == "[True, False, True, False, False]", r.text()


def test_a_past_frame_reads_as_a_table_everywhere(session: Kernel) -> None:
    # df as it was after step 2, before step 4 changed one value
    r = session.execute("%%sql -o past\nSELECT k, v FROM frame('df', 2) ORDER BY k")
    assert r.status == "ok", r.text()
    assert session.execute("print(past.v.tolist(), df.v.tolist())").text().strip() == \
        "[10.0, 20.0, 30.0] [10.0, 99.0, 30.0]"
    r = session.execute("import fm_kernel as fm\n"
                        "print(fm.history().sql(\"SELECT sum(v) AS s FROM frame('df', 4)\").s[0])")
    assert r.text().strip() == "139.0"
    live = fm("sql", "SELECT v FROM frame('df', 2) WHERE k = 2", "--history", str(session.path),
              "--format", "json")
    assert live.returncode == 0, live.stderr
    assert json.loads(live.stdout) == [{"v": 20.0}]
    bad = session.execute("%sql SELECT * FROM frame('loss', 2)")
    assert bad.status == "error" and "not a DataFrame" in bad.text()


def test_writes_are_refused_and_errors_are_one_line(session: Kernel) -> None:
    for q, words in (("DELETE FROM fm_events", "read-only"),
                     ("CREATE TABLE t AS SELECT 1", "read-only"),
                     ("COPY steps TO '/tmp/out.csv'", "read-only"),
                     ("ATTACH '/tmp/x.duckdb' AS x", "read-only"),
                     ("SELEC 1", "syntax error"),
                     ("SELECT nope FROM steps", "nope")):
        r = session.execute("%sql " + q)
        assert r.status == "error", q
        assert words in r.text() and "Traceback" not in r.text(), (q, r.text())
        assert len(r.text().strip().splitlines()) == 1, r.text()
    assert not Path("/tmp/out.csv").exists() or Path("/tmp/out.csv").stat().st_mtime < time.time() - 60
    r = session.execute("%%sql -o 1bad\nSELECT 1")
    assert r.status == "error" and "not a valid Python name" in r.text()


def _endpoint(history: Path) -> dict:
    path = Path(str(history) + ".endpoint.json")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    return json.loads(path.read_text())


def _request(info: dict, method: str, path: str, body: bytes | None = None,
             token: str | None = "good") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token == "good":
        headers["Authorization"] = f"token {info['token']}"
    elif token is not None:
        headers["Authorization"] = token
    req = urllib.request.Request(info["url"] + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_endpoint_answers_and_refuses_with_json(session: Kernel) -> None:
    info = _endpoint(session.path)
    assert info["url"].startswith("http://127.0.0.1:")
    code, body = _request(info, "POST", "/sql", json.dumps({"query": "SELECT count(*) AS n FROM steps"}).encode())
    assert code == 200 and body["columns"] == ["n"] and body["rows"][0][0] >= 6
    cases = [
        ("POST", "/sql", b'{"query": "SELECT 1"}', None, 401),
        ("POST", "/sql", b'{"query": "SELECT 1"}', "token wrong", 401),
        ("POST", "/sql", b'{"query": ', "good", 400),
        ("POST", "/sql", b'{"q": 1}', "good", 400),
        ("POST", "/sql", json.dumps({"query": "DROP TABLE fm_events"}).encode(), "good", 400),
        ("POST", "/sql", b"x" * (2 << 20), "good", 413),
        ("GET", "/nowhere", None, "good", 404),
        ("POST", "/../../etc/passwd", b"{}", "good", 404),
        ("GET", "/sql", None, "good", 405),
    ]
    for method, path, body, token, expected in cases:
        code, payload = _request(info, method, path, body, token)
        assert code == expected, (method, path, code, payload)
        assert "error" in payload, payload
    assert query_count(session) >= 6  # the history is intact


def query_count(k: Kernel) -> int:
    r = k.execute("import fm_kernel as fm\nprint(int(fm.history().sql('SELECT count(*) AS n FROM steps').n[0]))")
    return int(r.text().strip())


def test_a_burst_of_bad_requests_during_a_cell_changes_nothing(session: Kernel) -> None:
    info = _endpoint(session.path)
    before = query_count(session)
    msg_id = session.kc.execute("import time\nt0 = time.time()\nacc = sum(i * i for i in range(3_000_000))\n"
                                "print('acc', acc)")
    bad = [("POST", "/sql", b"{not json", "good"), ("POST", "/sql", b"{}", "token nope"),
           ("GET", "/x", None, None), ("POST", "/runs/zzz/signals/go", b"{}", None)]

    def fire(i: int) -> int:
        method, path, body, token = bad[i % len(bad)]
        return _request(info, method, path, body, token)[0]

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(fire, range(1000)))
    reply = session.collect(msg_id, timeout=120)
    assert reply.status == "ok" and "acc 8999995500000500000" in reply.text()
    assert all(400 <= c < 500 for c in codes), sorted(set(codes))
    assert query_count(session) == before + 2  # the cell and the count itself


def test_fm_sql_and_fm_log_with_and_without_a_live_kernel(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        k.execute("a = 1")
        k.execute("b = 2")
        live = fm("sql", "SELECT step, code FROM steps ORDER BY step", "--history", str(path), "--format", "csv")
        assert live.returncode == 0, live.stderr
        assert live.stdout.splitlines() == ["step,code", "1,a = 1", "2,b = 2"]
        assert "b = 2" in fm("log", "--history", str(path)).stdout
    # the kernel is gone; a stale endpoint file must not matter
    Path(str(path) + ".endpoint.json").write_text(json.dumps(
        {"url": "http://127.0.0.1:9", "port": 9, "token": "x", "pid": 999999, "kernel_id": "gone"}))
    direct = fm("sql", "SELECT count(*) AS n FROM steps", "--history", str(path), "--format", "json")
    assert direct.returncode == 0 and json.loads(direct.stdout) == [{"n": 2}]
    assert "a = 1" in fm("log", "--history", str(path)).stdout
    bad = fm("sql", "SELEC", "--history", str(path))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "syntax error" in bad.stderr
    missing = fm("log", "--history", str(tmp_path / "none.duckdb"))
    assert missing.returncode == 1 and "no history at" in missing.stderr


def test_queries_cannot_reach_outside_the_history(session: Kernel) -> None:
    secret = Path(session.path).parent / "secret.txt"
    secret.write_text("do not read")
    for q in (f"SELECT content FROM read_text('{secret}')", f"SELECT * FROM '{secret}'",
              "SELECT getenv('HOME')", f"SELECT * FROM glob('{secret.parent}/*')",
              "SELECT * FROM query('SELECT 1')", "PRAGMA disable_checkpoint_on_shutdown"):
        r = session.execute("%sql " + q)
        assert r.status == "error" and "refused" in r.text() + r.content.get("evalue", ""), (q, r.text())
        assert "do not read" not in r.text()
    info = _endpoint(session.path)
    code, body = _request(info, "POST", "/sql", json.dumps(
        {"query": f"SELECT content FROM read_text('{secret}')"}).encode())
    assert code == 400 and "refused" in body["error"]
