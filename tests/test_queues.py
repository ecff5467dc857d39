"""fm.Queue through real kernels (issue 15, queues with flow control): the
concurrency limit held while every run runs; a rate limit and a
concurrency limit held across kill -9 and restart, with the rest of the
runs done once each; priority and FIFO order; an enqueue inside a flow done
once across kill -9; cancel of an enqueued run; the SQL columns and the
HTTP start with a queue. Runs write their start and end times to files,
which the assertions read."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from kernel_driver import (Kernel, check, fails, flow_kernel, lines, most_at_once, most_in_window,
                           query, wait_until)

PRELUDE = "import os, time, json\nimport fm_kernel as fm"


def http(url: str, body: dict, token: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("options", [{"concurrency": 0}, {"worker_concurrency": 1.5},
                                     {"rate": (5,)}, {"rate": (0, 1)}, {"rate": (5, float("nan"))}])
def test_limits_that_mean_nothing_are_refused_where_the_queue_is_made(options: dict) -> None:
    import fm_kernel as fm

    with pytest.raises(fm.UsageError, match=r"fm\.Queue\('x', "):
        fm.Queue("x", register=False, **options)


@pytest.fixture(scope="module")
def qk(tmp_path_factory):
    base = tmp_path_factory.mktemp("queues")
    path = base / "history.duckdb"
    with flow_kernel(path, PRELUDE + f"\nD = {str(base)!r}\n" + r'''
def note(name, text):
    with open(os.path.join(D, name), "a") as f:
        f.write(text + "\n")
def wait_file(name):
    while not os.path.exists(os.path.join(D, name)):
        time.sleep(0.02)
@fm.flow
def gate(name):   # holds its queue's slot until the file is there
    wait_file(name)
''') as k:
        k.dir = base  # type: ignore[attr-defined]
        yield k


def test_concurrency_two_never_runs_more_than_two_and_runs_them_all(qk: Kernel) -> None:
    check(qk, """
two = fm.Queue("two", concurrency=2)
@fm.flow
def work(i):
    t0 = time.time()
    time.sleep(0.3)
    note("work.times", json.dumps([i, t0, time.time()]))
    return i
runs = [two.enqueue(work, i) for i in range(8)]
print(runs[-1].status)
assert [r.result(120) for r in runs] == list(range(8))
""", timeout=180)
    rows = [json.loads(x) for x in lines(qk.dir / "work.times")]
    assert sorted(r[0] for r in rows) == list(range(8)), rows  # each once
    assert most_at_once([(s, e) for _, s, e in rows]) == 2, rows  # the limit, and used


def test_priority_orders_the_starts_lower_first_and_fifo_otherwise(qk: Kernel) -> None:
    check(qk, """
@fm.flow
def order(queue, i):
    note(queue + ".order", str(i))
pq, fq = fm.Queue("pq", concurrency=1, priority=True), fm.Queue("fq", concurrency=1)
held = [pq.enqueue(gate, "pq.go"), fq.enqueue(gate, "fq.go")]
time.sleep(0.5)   # both gates have started and hold their queue
prs = [pq.enqueue(order, "pq", i, priority=p) for i, p in [(1, 5), (2, 1), (3, 3), (4, None), (5, 1)]]
frs = [fq.enqueue(order, "fq", i) for i in [3, 1, 2]]
assert prs[0].status == "enqueued"
open(os.path.join(D, "pq.go"), "w").close(); open(os.path.join(D, "fq.go"), "w").close()
[r.result(60) for r in prs + frs]
""", timeout=120)
    # None is priority 0 (the first, as in DBOS); equal priorities in enqueue order
    assert lines(qk.dir / "pq.order") == ["4", "2", "5", "3", "1"]
    assert lines(qk.dir / "fq.order") == ["3", "1", "2"]
    name, _ = fails(qk, "fq.enqueue(order, 'fq', 9, priority=1)")
    assert name == "UsageError"


def test_cancel_of_an_enqueued_run_cancels_it_without_starting_it(qk: Kernel) -> None:
    check(qk, """
one = fm.Queue("one", concurrency=1)
@fm.flow
def never(i):
    note("never.ran", str(i))
g = one.enqueue(gate, "one.go")
c = one.enqueue(never, 1)
assert c.status == "enqueued", c.status
listed = fm.flows.registry().journal.listing(50).dicts()   # what `fm runs` shows
assert [r["waiting_in"] for r in listed if r["run_id"] == c.id] == ["fm.Queue(one)"], listed
assert c.cancel() is True and c.cancel() is False
assert c.status == "cancelled"
open(os.path.join(D, "one.go"), "w").close()
g.result(60)
after = one.enqueue(never, 2)
after.result(60)
""", timeout=120)
    name, _ = fails(qk, "c.result(5)")
    assert name == "Cancelled"
    assert lines(qk.dir / "never.ran") == ["2"], "the cancelled run ran"
    out = check(qk, "print(json.dumps(fm.history().sql(\"SELECT status, queue, started_at IS NULL, "
                    "enqueued_at IS NOT NULL FROM runs WHERE run_id = '\" + c.id + \"'\").values"
                    ".tolist()))")
    assert json.loads(out.strip().splitlines()[-1]) == [["cancelled", "one", True, True]]


def test_a_parents_timeout_cancels_its_enqueued_child(qk: Kernel) -> None:
    check(qk, """
held = fm.Queue("held", concurrency=1)
hg = held.enqueue(gate, "held.go")          # holds the queue's one slot
@fm.flow(timeout=1)
def impatient():
    kid = held.enqueue(never, 3)
    fm.wait_for("never-sent")
    return kid.id
ip = impatient.start()
try:
    ip.result(60)
except fm.Timeout:
    pass
kid_id = fm.history().sql("SELECT run_id FROM runs WHERE parent_run = '" + ip.id + "'").values[0][0]
t = time.time()
while fm.get_run(kid_id).status != "cancelled" and time.time() - t < 30:
    time.sleep(0.05)
open(os.path.join(D, "held.go"), "w").close()
hg.result(60)
time.sleep(0.5)
""", timeout=120)
    out = check(qk, "print(fm.get_run(kid_id).status, fm.history().sql(\"SELECT error->>'type', "
                    "started_at IS NULL FROM runs WHERE run_id = '\" + kid_id + \"'\").values.tolist())")
    assert out.split()[0] == "cancelled" and "fm_kernel.errors.Timeout" in out and "True" in out, out
    assert "3" not in lines(qk.dir / "never.ran"), "the cancelled child ran"


def test_http_start_with_a_queue_enqueues_there_and_refuses_an_unknown_queue(qk: Kernel) -> None:
    info = json.loads(Path(str(qk.path) + ".endpoint.json").read_text())
    url, token = info["url"] + "/flows/work/runs", info["token"]
    status, body = http(url, {"args": [100], "queue": "two"}, token)
    assert status == 201, body
    out = check(qk, f"r = fm.get_run({body['run_id']!r}); print(r.result(60), "
                    "fm.history().sql(\"SELECT queue FROM runs WHERE run_id = '\" + r.id"
                    " + \"'\").values.tolist())")
    assert out.split()[0] == "100" and "two" in out, out
    status, body = http(url, {"args": [1], "queue": "nope"}, token)
    assert status == 400 and "nope" in body["error"], body
    # a run id enqueues once, over HTTP and from Python
    first = http(url, {"args": [7], "queue": "two", "run_id": "w-7"}, token)
    again = http(url, {"args": [7], "queue": "two", "run_id": "w-7"}, token)
    assert (first[0], again[0], again[1]["started"]) == (201, 200, False), (first, again)
    check(qk, "a = two.enqueue(work, 8, run_id='w-8'); b = two.enqueue(work, 8, run_id='w-8')\n"
              "assert a is b and a.result(60) == 8 and fm.get_run('w-7').result(60) == 7\n"
              "assert fm.history().sql(\"SELECT count(*) FROM runs WHERE run_id IN ('w-7', 'w-8')\""
              ").values[0][0] == 2")


def test_the_docs_sample_runs_as_written(qk: Kernel) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "flows.md").read_text()
    section = text.split("\n## Queues\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    out = check(qk, code, timeout=120).strip().splitlines()
    expected = re.findall(r"^print\(.*?# (.*)$", code, re.M)
    assert out[-2:] == expected and len(expected) == 2, (out, expected)
    (sql,) = re.findall(r"```sql\n(.*?)```", section, re.S)
    out = check(qk, f"print(fm.history().sql({sql!r}).to_string())")
    assert "thumbs" in out and "urgent" in out, out


# -- across kill -9 -------------------------------------------------------------------------

PACED = r'''
D = {d!r}
paced = fm.Queue("paced", concurrency=2, rate=(5, 1))
@fm.step
def mark(i):
    with open(os.path.join(D, "marks"), "a") as f:
        f.write(f"{{i}}\n")
@fm.flow
def tick(i):
    mark(i)
    time.sleep(0.25)
    return i
'''


def test_rate_and_concurrency_hold_across_kill9_and_the_rest_run_once(tmp_path: Path) -> None:
    path = tmp_path / "history.duckdb"
    env = {"FM_HISTORY": str(path)}
    n = 30
    k = Kernel(env=env)
    try:
        check(k, PRELUDE + PACED.format(d=str(tmp_path)))
        check(k, f"runs = [paced.enqueue(tick, i) for i in range({n})]")
        wait_until(lambda: len(lines(tmp_path / "marks")) >= 8, timeout=60, what="8 runs started")
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    before = len(lines(tmp_path / "marks"))
    assert before < n, "all ran before the kill: nothing was left for the restart"
    with Kernel(env=env) as k2:  # the restored namespace defines the queue and the flow again
        check(k2, "import fm_kernel as fm\nprint(fm.runs().shape)", timeout=90)
        wait_until(lambda: len(set(lines(tmp_path / "marks"))) >= n, timeout=120,
                   what="every run to have started")
        check(k2, "import fm_kernel as fm, time\nt = time.time()\n"
                  "while fm.history().sql(\"SELECT count(*) FROM runs WHERE flow = 'tick' AND "
                  "status <> 'succeeded'\").values[0][0] and time.time() - t < 60: time.sleep(0.1)",
              timeout=90)
    rows = query(path, "SELECT CAST(args->'args'->>0 AS INTEGER), status, epoch(started_at),"
                       " epoch(finished_at) FROM runs WHERE flow = 'tick'")
    assert sorted(r[0] for r in rows) == list(range(n)), "a run missing or recorded twice"
    assert {r[1] for r in rows} == {"succeeded"}, rows
    marks = [int(x) for x in lines(tmp_path / "marks")]
    assert sorted(set(marks)) == list(range(n))
    resumed = query(path, "SELECT count(*) FROM events WHERE kind = 'run_resumed'")[0][0]
    # a step in flight at the kill runs again (at-least-once); nothing else does
    assert len(marks) - n <= resumed, (marks, resumed)
    starts = [r[2] for r in rows]
    assert most_in_window(starts, 0.99) <= 5, sorted(starts)  # the rate, the restart included
    assert most_at_once([(r[2], r[3]) for r in rows]) <= 2, rows  # resumed runs held their slots
    later = sorted(starts)[before:]
    per_s = (len(later) - 1) / (later[-1] - later[0])
    assert per_s <= 5.5, per_s


CHILD = r'''
D = {d!r}
kids = fm.Queue("kids", concurrency=1)
@fm.flow
def child(x):
    with open(os.path.join(D, "child.x"), "a") as f:
        f.write(x + "\n")
    return x.upper()
@fm.flow
def parent():
    c = kids.enqueue(child, "x")
    with open(os.path.join(D, "parent.holding"), "a") as f:
        f.write("held\n")
    while not os.path.exists(os.path.join(D, "go")):
        time.sleep(0.05)
    return [c.id, c.result(60)]
'''


def test_an_enqueue_in_a_flow_happens_once_across_kill9(tmp_path: Path) -> None:
    path = tmp_path / "history.duckdb"
    env = {"FM_HISTORY": str(path)}
    k = Kernel(env=env)
    try:
        check(k, PRELUDE + CHILD.format(d=str(tmp_path)))
        pid = check(k, "p = parent.start(); print(p.id)").strip().splitlines()[-1]
        wait_until(lambda: lines(tmp_path / "parent.holding"), what="the parent to hold")
        time.sleep(0.3)
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    (tmp_path / "go").touch()
    with Kernel(env=env) as k2:
        out = check(k2, f"import fm_kernel as fm, json\nprint(json.dumps(fm.get_run({pid!r})"
                        ".result(60)))", timeout=90)
    child_id, value = json.loads([x for x in out.splitlines() if x.startswith("[")][-1])
    assert value == "X"
    assert lines(tmp_path / "child.x") == ["x"], "the child ran twice"
    rows = query(path, "SELECT run_id, parent_run, parent_position, queue FROM runs"
                       " WHERE flow = 'child'")
    assert rows == [(child_id, pid, 1, "kids")], rows
    steps = query(path, "SELECT name, status, result->>'run_id' FROM run_steps WHERE run_id = ?"
                        " ORDER BY position", [pid])
    # result(60) is a position of its own (its deadline journaled: parking.py), after the enqueue
    assert steps[0] == ("fm.enqueue(kids:child)", "ok", child_id), steps
    assert [s[:2] for s in steps[1:]][-1] == (f"fm.result({child_id})", "ok"), steps


LATER = r'''
D = {d!r}
later = fm.Queue("later", concurrency=1)
@fm.flow
def hold():
    while not os.path.exists(os.path.join(D, "go")):
        time.sleep(0.05)
@fm.flow
def step_in_line(i):
    with open(os.path.join(D, "line"), "a") as f:
        f.write(f"{{i}}\n")
'''


def test_fm_worker_starts_what_a_closed_notebook_left_enqueued(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, PRELUDE + LATER.format(d=str(tmp_path)))
        check(k, "h = later.enqueue(hold); time.sleep(0.3)\n"
                 "ids = [later.enqueue(step_in_line, i).id for i in range(3)]\n"
                 "assert h.status == 'running' and fm.get_run(ids[0]).status == 'enqueued'")
    (tmp_path / "go").touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    worker = subprocess.Popen([str(Path(sys.executable).parent / "fm"), "worker", "--history",
                               str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_until(lambda: len(lines(tmp_path / "line")) >= 3, timeout=90,
                   what="the worker to start the enqueued runs")
        time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
    assert lines(tmp_path / "line") == ["0", "1", "2"]
    rows = query(path, "SELECT status, count(*) FROM runs WHERE queue = 'later' GROUP BY status")
    assert rows == [("succeeded", 4)], rows
