"""Event sources beyond HTTP with real kernels: fm.files (a run per file that
arrives, each once across kill -9) and fm.poll (a cursor kept with the
events it produced: across kill -9 no item twice, none missed; a failing
poll function logged with its traceback and retried)."""

from __future__ import annotations

import json
from pathlib import Path

from kernel_driver import Kernel, check, wait_until
from test_tasks import Api

FILES = r'''
import fm_kernel as fm

@fm.step
def read(path):
    import time
    time.sleep(0.5)  # so a kill finds runs in flight
    with open(path) as f:
        return f.read().strip()

@fm.flow(on=fm.files("incoming/*.csv", every=0.2, settle=0.2))
def ingest(f):
    return read(f["path"])
'''


def _api(history: Path) -> Api:
    info = json.loads(Path(str(history) + ".endpoint.json").read_text())
    return Api(info["url"], info["token"])


def _one(api: Api, sql: str, params: list | None = None) -> object:
    status, got = api("POST", "/sql", {"query": sql, "params": params or []})
    assert status == 200, got
    return got["rows"][0][0]  # type: ignore[index]


def _drop(folder: Path, numbers: range) -> None:
    # Written under a dot-name and renamed in, as a producer should: the
    # glob never matches a half-written file.
    for i in numbers:
        tmp = folder / f".{i}.csv.tmp"
        tmp.write_text(f"row-{i}\n")
        tmp.rename(folder / f"{i}.csv")


RECEIVED = "SELECT count(*) FROM received_events WHERE name = 'files:ingest'"


def test_a_hundred_files_start_a_hundred_runs_across_two_kill9s(tmp_path: Path) -> None:
    history, folder = tmp_path / "h.duckdb", tmp_path / "incoming"
    folder.mkdir()
    env = {"FM_HISTORY": str(history)}
    _drop(folder, range(0, 40))  # present before the flow is defined: arrivals too
    k1 = Kernel(env=env, cwd=tmp_path)  # the glob is relative to the kernel's directory
    check(k1, FILES)
    api = _api(history)
    wait_until(lambda: _one(api, RECEIVED) > 0, 20, "the first files stored")
    k1.kill9()  # while their runs start and run
    _drop(folder, range(40, 70))  # arrive while no kernel is up
    k2 = Kernel(env=env, cwd=tmp_path)
    check(k2, FILES)  # defined again (the restored namespace had it too)
    api = _api(history)
    wait_until(lambda: _one(api, RECEIVED) >= 70, 20, "the files dropped while killed")
    _drop(folder, range(70, 100))
    wait_until(lambda: _one(api, RECEIVED) > 70, 20, "a file dropped while up")
    k2.kill9()
    with Kernel(env=env, cwd=tmp_path) as k3:
        check(k3, FILES)
        api = _api(history)
        done = "SELECT count(*) FROM runs WHERE flow = 'ingest' AND status = 'succeeded'"
        wait_until(lambda: _one(api, done) == 100, 30, "100 runs succeeded")
        assert _one(api, "SELECT count(*) FROM runs WHERE flow = 'ingest'") == 100
        results = api("POST", "/sql", {"query": "SELECT result FROM runs WHERE flow = 'ingest'"})[1]
        assert sorted(json.loads(r[0]) for r in results["rows"]) == sorted(  # type: ignore[index]
            f"row-{i}" for i in range(100))
        assert _one(api, RECEIVED) == 100
        # the kills came while runs were going: the next kernels resumed them
        assert _one(api, "SELECT count(*) FROM events WHERE kind = 'run_resumed'") > 0
        assert _one(api, "SELECT count(DISTINCT data->>'path') FROM received_events"
                         " WHERE name = 'files:ingest'") == 100
        assert _one(api, "SELECT any_value(source) FROM received_events") \
            == f"files:{folder}/*.csv"
        # A rewrite under the same name (new size, new mtime) is a new arrival.
        (folder / "7.csv").write_text("row-7, corrected\n")
        wait_until(lambda: _one(api, done) == 101, 20, "the rewritten file's run")
        assert _one(api, "SELECT result FROM runs WHERE flow = 'ingest' ORDER BY started_at"
                         " DESC LIMIT 1") == '"row-7, corrected"'


POLL = r'''
import time
import fm_kernel as fm

FEED = {feed!r}

def fetch(cursor):
    with open(FEED) as f:
        lines = f.read().splitlines()
    start = cursor or 0
    got = lines[start:start + 4]
    time.sleep(0.05)  # a kill may come while a batch is in hand, not yet committed
    return got, start + len(got)

@fm.flow(on=fm.poll(fetch, every=0.1))
def handle(item):
    return item
'''


def _feed(path: Path, numbers: range) -> None:
    with path.open("a") as f:
        f.writelines(f"item-{i}\n" for i in numbers)


def test_a_poll_cursor_survives_kill9_no_item_twice_none_missed(tmp_path: Path) -> None:
    history, feed = tmp_path / "h.duckdb", tmp_path / "feed.txt"
    env = {"FM_HISTORY": str(history)}
    cell = POLL.format(feed=str(feed))
    items = "SELECT count(*) FROM received_events WHERE name = 'poll:handle'"
    _feed(feed, range(0, 20))
    k1 = Kernel(env=env)
    check(k1, cell)
    api = _api(history)
    wait_until(lambda: _one(api, items) >= 8, 20, "two batches polled")
    k1.kill9()
    _feed(feed, range(20, 40))
    k2 = Kernel(env=env)
    check(k2, cell)
    api = _api(history)
    wait_until(lambda: _one(api, items) >= 24, 20, "polling after the first kill")
    k2.kill9()
    _feed(feed, range(40, 60))
    with Kernel(env=env) as k3:
        check(k3, cell)
        api = _api(history)
        wait_until(lambda: _one(api, items) >= 60, 30, "every item polled")
        done = "SELECT count(*) FROM runs WHERE flow = 'handle' AND status = 'succeeded'"
        wait_until(lambda: _one(api, done) == 60, 30, "60 runs succeeded")
        got = api("POST", "/sql", {"query": "SELECT data->>'$' FROM received_events"
                                   " WHERE name = 'poll:handle' ORDER BY seq"})[1]
        assert [r[0] for r in got["rows"]] == [f"item-{i}" for i in range(60)], got  # type: ignore[index]
        assert _one(api, "SELECT count(*) FROM runs WHERE flow = 'handle'") == 60
        assert _one(api, "SELECT max(CAST(payload->>'cursor' AS INTEGER)) FROM events"
                         " WHERE kind = 'poll_cursor'") == 60


FLAKY = r'''
import logging
import fm_kernel as fm

class Catch(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

catch = Catch()
logging.getLogger("fm_kernel.flows.sources").addHandler(catch)
calls = []

def flaky(cursor):
    calls.append(cursor)
    if len(calls) <= 2:
        raise ConnectionError(f"feed down ({len(calls)})")
    return (["a", "b"], 2) if cursor is None else ([], cursor)

@fm.flow(on=fm.poll(flaky, every=0.2))
def shout(item):
    return item.upper()
'''


def test_a_failing_poll_fn_is_logged_with_its_traceback_and_retried(kernel: Kernel) -> None:
    check(kernel, FLAKY)
    check(kernel, "import time\nfor _ in range(100):\n"
                  "    if (sorted(r.result for r in fm.runs().itertuples()"
                  " if r.flow == 'shout' and r.status == 'succeeded') == ['\"A\"', '\"B\"']\n"
                  "            and len(calls) >= 4): break\n"
                  "    time.sleep(0.1)\nelse:\n    raise AssertionError(fm.runs())", timeout=30)
    out = json.loads(check(kernel, "import json, traceback\nprint(json.dumps({'calls': calls[:4], "
                                   "'errors': [[r.getMessage(), ''.join(traceback.format_exception("
                                   "*r.exc_info))] for r in catch.records if r.exc_info]}))"))
    assert out["calls"][:4] == [None, None, None, 2], out  # the failed cursor is asked again
    assert len(out["errors"]) == 2, out
    message, tb = out["errors"][0]
    assert "poll:" in message and "flaky" in message and "'shout'" in message, message
    assert "ConnectionError: feed down (1)" in tb and "in flaky" in tb, tb


HEAL = r'''
import fm_kernel as fm
from fm_kernel.flows.events import receive_many
from fm_kernel.flows.sources import FileSource

src = FileSource({pattern!r}, every=0.2)
# As a kill between the commit and the runs leaves it: the event stored, no run.
receive_many("files:late", src.label, [("file-x", {{"path": "gone.csv", "size": 1, "mtime": 0}})])

@fm.flow(on=src)
def late(f):
    return f["path"]
'''


def test_events_stored_before_a_kill_get_their_runs_when_the_source_starts(
        kernel: Kernel, tmp_path: Path) -> None:
    check(kernel, HEAL.format(pattern=str(tmp_path / "none" / "*.csv")))
    check(kernel, "import time\nfor _ in range(100):\n"
                  "    if [r.result for r in fm.runs().itertuples() if r.flow == 'late'] == "
                  "['\"gone.csv\"']: break\n    time.sleep(0.1)\nelse:\n    raise AssertionError(fm.runs())",
          timeout=30)


ATOMIC = r'''
import threading
import fm_kernel as fm
from fm_kernel import flows
from fm_kernel.flows.sources import PollSource
from fm_kernel.record.store import Store

store = Store.open({path!r})
flows.configure(store)
src = PollSource(lambda c: (["a", "b", "c"][c or 0:], 3), every=60)

@fm.flow(on=src)
def h(item):
    return item

src.event = "poll:h"  # what attach() sets; the ticks are driven here, not by its thread
real = store.append_events

def dies_writing_the_cursor(rows):  # after the rows are written, before any commit
    real(rows)
    if any(kind == "poll_cursor" for kind, *_ in rows):
        raise RuntimeError("the process dies here")

store.append_events = dies_writing_the_cursor
try:
    src.tick(h, threading.Event())
except RuntimeError as exc:
    print("tick 1:", exc)
count = "SELECT count(*) FROM fm_events WHERE kind = ?"
print("after:", store.query(count, ["event_received"]).rows, store.query(count, ["poll_cursor"]).rows)
store.append_events = real
src.tick(h, threading.Event())
src.tick(h, threading.Event())  # nothing new: nothing written
print("again:", store.query(count, ["event_received"]).rows, store.query(count, ["poll_cursor"]).rows,
      src.cursor(store))
print(sorted(fm.get_run(r).result(10) for r, in store.query("SELECT DISTINCT run_id FROM fm_run_records").rows))
flows.registry().close()
store.close()
'''


def test_a_poll_tick_commits_its_items_and_cursor_together_or_neither(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ATOMIC.format(path=str(tmp_path / "h.duckdb"))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tick 1: the process dies here" in out.stdout, out.stdout
    assert "after: [(0,)] [(0,)]" in out.stdout, out.stdout  # no item without its cursor
    assert "again: [(3,)] [(1,)] (1, 3)" in out.stdout, out.stdout
    assert "['a', 'b', 'c']" in out.stdout, out.stdout
