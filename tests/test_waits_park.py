"""The waits that held a thread after parking came (issue 15) hold none
now, through real kernels: a step's retry backoff, fm.task waiting for its
worker, child.result(timeout=...), fm.map items done elsewhere (an
executor) and fm.map items in backoff. For each, 300 runs wait at once on
bounded threads (counted in the kernel) and each resumes correctly; retry
backoff and fm.task also across kill -9 of the kernel. A run timeout expires
a parked run from the one timer heap (no deadline thread of its own).

Each test fails on the code from before (commit dda1562): there each of
these waits kept its run's thread (and fm.map a pool thread per item), so
300 waiting runs meant 300+ threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_driver import Kernel, check, lines, query, wait_until

N = 300
MOST_THREADS = 50  # issue 15's target for 10,000 sleeping runs

PRELUDE = r'''
import os, sys, time, json, threading, collections
import concurrent.futures as cf
import fm_kernel as fm
from fm_kernel.flows.tasks import board

def held(rs, wait=60):
    """Threads in this process until every run in rs is parked (or wait s
    passed), and just after: the most seen."""
    end, most = time.time() + wait, threading.active_count()
    while time.time() < end and not all(getattr(r, "parked", False) for r in rs):
        most = max(most, threading.active_count())
        time.sleep(0.1)
    time.sleep(0.3)
    return {"threads": max(most, threading.active_count()),
            "parked": sum(bool(getattr(r, "parked", False)) for r in rs),
            "names": sorted({t.name.rstrip("0123456789_-") for t in threading.enumerate()})}

def finish_tasks(queue, answer):
    """Be the worker: claim every task on queue and complete it with answer(payload)."""
    b, n = board(), 0
    while (t := b.claim(queue, "test-worker")) is not None:
        b.complete(t["task_id"], t["lease"], answer(t["payload"]))
        n += 1
    return n
'''

FLOWS = r'''
TRIES = collections.Counter()

@fm.step(retries=1, retry_delay=15)
def flaky(i):
    TRIES[i] += 1
    if TRIES[i] == 1:
        raise RuntimeError("the first attempt fails")
    return i

@fm.flow
def backs_off(i):
    return flaky(i) * 2

@fm.flow
def asks_a_worker(i):
    return fm.task("jobs", {"i": i})["v"]

@fm.flow
def kid(i):
    return fm.wait_for("go")["n"] + i

@fm.flow
def waits_on_kid(i):
    c = kid.start(i)
    return c.result(timeout=600)

@fm.flow
async def awaits_kid(i):
    return await kid.start(i)

@fm.flow
def waits_too_little():
    c = kid.start(0)
    try:
        return c.result(timeout=2)
    except fm.Timeout:
        return "late"

class Elsewhere(cf.Executor):
    """Items done by another system: its futures end when finish() says."""
    def __init__(self):
        self.jobs, self.lock = [], threading.Lock()
    def submit(self, fn, *args, **kwargs):
        f = cf.Future()
        with self.lock:
            self.jobs.append((f, fn, args, kwargs))
        return f
    def finish(self):
        with self.lock:
            jobs, self.jobs = self.jobs, []
        for f, fn, args, kwargs in jobs:
            if f.set_running_or_notify_cancel():
                f.set_result(fn(*args, **kwargs))
        return len(jobs)

ELSEWHERE = Elsewhere()

def stack_depth():
    f, n = sys._getframe(), 0
    while f is not None:
        f, n = f.f_back, n + 1
    return n

class AtOnce(cf.Executor):
    """Futures done before submit returns (a cache, say): each callback comes
    at once. Notes how deep the stack was at each submit."""
    def __init__(self):
        self.depths = []
    def submit(self, fn, *args, **kwargs):
        self.depths.append(stack_depth())
        f = cf.Future()
        f.set_result(fn(*args, **kwargs))
        return f

AT_ONCE = AtOnce()

@fm.flow
def maps_at_once(n):
    return sum(fm.map(double, range(n), executor=AT_ONCE, concurrency=4))

def double(x):
    return 2 * x

@fm.flow
def maps_elsewhere(i):
    return fm.map(double, [i, i + 1], executor=ELSEWHERE)

@fm.flow
def maps_with_backoff(i):  # items from 1000 on: flaky's counts for backs_off are below
    return fm.map(flaky, [1000 + 3 * i, 1001 + 3 * i, 1002 + 3 * i], concurrency=3)

@fm.flow(timeout=3)
def times_out_waiting():
    return fm.task("nobody", {})
'''


@pytest.fixture(scope="module")
def wk(tmp_path_factory):
    path = tmp_path_factory.mktemp("waits") / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, PRELUDE + FLOWS)
        yield k


def held(k: Kernel, runs: str, wait: float = 60) -> dict:
    out = check(k, f"print(json.dumps(held({runs}, {wait})))", timeout=wait + 60)
    return json.loads(out.strip().splitlines()[-1])


def bounded(figures: dict, what: str, runs: int) -> None:
    assert figures["threads"] < MOST_THREADS, (
        f"{figures['threads']} threads while {runs} runs waited on {what}", figures)
    assert figures["parked"] == runs, figures
    print(f"{runs} runs waiting on {what}: {figures['threads']} threads")


def test_retry_backoffs_hold_no_thread(wk: Kernel) -> None:
    check(wk, f"rs = [backs_off.start(i) for i in range({N})]")
    bounded(held(wk, "rs"), "a retry's backoff", N)
    assert check(wk, "print(rs[0].parked_at)").startswith("the retry of step 'flaky'")
    out = check(wk, "print(json.dumps([r.result(120) for r in rs]), max(TRIES.values()), "
                    "min(TRIES.values()))", timeout=180)
    results, most, least = out.strip().splitlines()[-1].rsplit(" ", 2)
    assert json.loads(results) == [2 * i for i in range(N)]
    assert (most, least) == ("2", "2")  # one failed attempt, one retry: never more


def test_task_waits_hold_no_thread(wk: Kernel) -> None:
    check(wk, f"ts = [asks_a_worker.start(i) for i in range({N})]")
    bounded(held(wk, "ts"), "fm.task", N)
    assert check(wk, "print(finish_tasks('jobs', lambda p: {'v': p['i'] * 3}))").strip() == str(N)
    out = check(wk, "print(json.dumps([r.result(60) for r in ts]))", timeout=120)
    assert json.loads(out.strip().splitlines()[-1]) == [3 * i for i in range(N)]


def test_child_result_with_a_timeout_holds_no_thread(wk: Kernel) -> None:
    half = N // 2  # a parent and its child: N runs waiting
    check(wk, f"ps = [waits_on_kid.start(i) for i in range({half})]\n"
              "wait = time.time() + 30\n"
              "while time.time() < wait and len([r for r in fm.runs()['flow'] if r == 'kid']) < "
              f"{half}:\n    time.sleep(0.1)\n"
              "kids = [fm.get_run(r) for r, f in zip(fm.runs()['run_id'], fm.runs()['flow']) "
              "if f == 'kid']")
    bounded(held(wk, "ps + kids"), "child.result(timeout=600) and the children's waits", N)
    assert "timeout 600s" in check(wk, "print(ps[0].parked_at)")
    check(wk, "for c in kids:\n    c.signal('go', {'n': 1000})")
    out = check(wk, "print(json.dumps(sorted(r.result(60) for r in ps)))", timeout=120)
    assert json.loads(out.strip().splitlines()[-1]) == [1000 + i for i in range(half)]


def test_an_async_flow_awaiting_its_child_parks(wk: Kernel) -> None:
    check(wk, "aw = awaits_kid.start(5)")
    wait_until(lambda: check(wk, "print(aw.parked)").strip() == "True", what="the async parent to park")
    assert check(wk, "print(aw.parked_at)").startswith("the result of run")
    check(wk, "from fm_kernel.flows.context import registry\n"
              "[k for k in list(registry().runs.values()) if k.flow_name == 'kid' and k.executing"
              " and not k.finished][-1].signal('go', {'n': 10})")
    assert check(wk, "print(aw.result(30))").strip() == "15"


def test_child_result_timeout_fires_while_parked(wk: Kernel) -> None:
    check(wk, "late = waits_too_little.start()")
    wait_until(lambda: check(wk, "print(late.parked)").strip() == "True", what="the parent to park")
    assert check(wk, "print(late.result(30))").strip() == "late"
    steps = check(wk, "from fm_kernel.flows.context import registry\n"
                      "print(json.dumps([(r['name'][:10], r['status']) for r in "
                      "registry().journal.step_rows(late.id)]))")
    assert json.loads(steps.strip().splitlines()[-1])[-2:] == [["fm.result(", "waiting"],
                                                                ["fm.result(", "failed"]]


def test_map_items_done_elsewhere_hold_no_thread(wk: Kernel) -> None:
    check(wk, f"ms = [maps_elsewhere.start(i) for i in range({N})]\n"
              "wait = time.time() + 60\n"
              f"while time.time() < wait and len(ELSEWHERE.jobs) < {2 * N}:\n    time.sleep(0.1)")
    bounded(held(wk, "ms"), "fm.map items in an executor", N)
    assert check(wk, "print(ELSEWHERE.finish())").strip() == str(2 * N)
    out = check(wk, "print(json.dumps([r.result(60) for r in ms]))", timeout=120)
    assert json.loads(out.strip().splitlines()[-1]) == [[2 * i, 2 * i + 2] for i in range(N)]


def test_a_map_whose_futures_are_done_at_once_submits_in_a_loop(wk: Kernel) -> None:
    # 3,000 items: submitting the next from each done-callback would recurse past Python's limit
    assert check(wk, "print(maps_at_once(3000))").strip() == str(3000 * 2999)
    spread = check(wk, "print(max(AT_ONCE.depths) - min(AT_ONCE.depths))").strip()
    assert int(spread) < 20, f"the stack grew by {spread} frames over the map's submits"


def test_map_items_in_backoff_hold_no_thread(wk: Kernel) -> None:
    n = N // 3  # three items each: N items in backoff
    check(wk, f"mb = [maps_with_backoff.start(i) for i in range({n})]")
    bounded(held(wk, "mb"), "fm.map items in a retry's backoff", n)
    out = check(wk, "print(json.dumps([r.result(120) for r in mb]), "
                    "set(v for x, v in TRIES.items() if x >= 1000))", timeout=180)
    results, tries = out.strip().splitlines()[-1].rsplit(" ", 1)
    assert json.loads(results) == [[1000 + 3 * i, 1001 + 3 * i, 1002 + 3 * i] for i in range(n)]
    assert tries == "{2}"


def test_a_timeout_expires_a_parked_run_from_the_one_timer_heap(wk: Kernel) -> None:
    check(wk, "to = times_out_waiting.start()")
    wait_until(lambda: check(wk, "print(to.parked)").strip() == "True", what="the run to park")
    out = check(wk, "try:\n    to.result(30)\nexcept fm.Timeout as e:\n    print('Timeout', to.status)\n"
                    "print([t for t in board().tasks.values() if t.queue == 'nobody'][0].status)\n"
                    "print(json.dumps(sorted(t.name for t in threading.enumerate() "
                    "if t.name.startswith('fm-run-'))))")
    said = out.strip().splitlines()
    assert said[:2] == ["Timeout cancelled", "cancelled"], out
    names = json.loads(said[-1])
    assert "fm-run-timers" in names and "fm-run-deadlines" not in names, names


KILL_CODE = r'''
D = {d!r}
def mark(name):
    with open(os.path.join(D, name), "a") as f:
        f.write(f"{{time.time()}}\n")

@fm.step(retries=1, retry_delay=12)
def fails_once(i):
    mark(f"try.{{i}}")
    if len(open(os.path.join(D, f"try.{{i}}")).read().splitlines()) == 1:
        raise RuntimeError("the first attempt fails")
    return i

@fm.step
def side(i):
    mark(f"side.{{i}}")
    return i

@fm.flow
def durable_backoff(i):
    return fails_once(i) + 100

@fm.flow
def durable_task(i):
    a = side(i)
    return a + fm.task("killjobs", {{"i": i}})["v"]
'''


def _across_kill(tmp_path: Path, start: str, after: str, timeout: float = 120) -> tuple[list, Path, dict]:
    """Start runs (``start`` sets ``rs``), kill -9 once all 20 are parked, then
    in a new kernel: the resumed runs park again on bounded threads, and
    ``after`` prints their results as JSON."""
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    d = tmp_path / "marks"
    d.mkdir()
    code = PRELUDE + KILL_CODE.format(d=str(d))
    k = Kernel(env=env)
    try:
        check(k, code + start + "\nids = [r.id for r in rs]")
        ids = json.loads(check(k, "print(json.dumps(ids))"))
        assert held(k, "rs")["parked"] == 20
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    with Kernel(env=env) as k2:
        check(k2, code + f"rs = [fm.get_run(i) for i in {ids!r}]")
        figures = held(k2, "rs")
        bounded(figures, "resumed waits", 20)
        out = check(k2, after, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1]), d, env


def test_retry_backoff_parks_again_after_kill9_and_waits_what_is_left(tmp_path: Path) -> None:
    results, d, env = _across_kill(tmp_path, "rs = [durable_backoff.start(i) for i in range(20)]",
                                   "print(json.dumps([r.result(90) for r in rs]))")
    assert results == [i + 100 for i in range(20)]
    for i in range(20):
        first, second = (float(t) for t in lines(d / f"try.{i}"))  # two attempts, never three
        assert second - first >= 12 - 0.05, (i, second - first)  # not at once on resume
    rows = query(Path(env["FM_HISTORY"]), "SELECT count(*) FROM runs WHERE status = 'succeeded'")
    assert rows[0][0] == 20


def test_task_wait_parks_again_after_kill9_and_finishes_once(tmp_path: Path) -> None:
    results, d, env = _across_kill(
        tmp_path, "rs = [durable_task.start(i) for i in range(20)]",
        "finish_tasks('killjobs', lambda p: {'v': p['i'] * 10})\n"
        "print(json.dumps([r.result(60) for r in rs]))")
    assert results == [i + 10 * i for i in range(20)]
    for i in range(20):
        assert len(lines(d / f"side.{i}")) == 1, i  # the step before the task ran once
    rows = query(Path(env["FM_HISTORY"]), "SELECT count(*) FROM tasks WHERE status = 'completed'")
    assert rows[0][0] == 20
