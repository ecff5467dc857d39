"""fm.map over a Dask cluster (``executor=client``), through real processes:
a kernel, a LocalCluster of two worker processes, kill -9 of a worker and of
the kernel. Step bodies are functions defined in notebook cells (cloudpickled
to the workers); every result is journaled by the kernel, and marker files
written by the items count how often each one really ran."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from functools import partial

from kernel_driver import Kernel, check, query
from kernel_driver import wait_until as _wait_until

wait_until = partial(_wait_until, poll=0.02)  # noqa: E402

# Dask logs worker deaths and lost clients at WARNING/ERROR on stderr; the
# tests cause both on purpose.
QUIET = {"DASK_LOGGING__DISTRIBUTED": "critical"}

PRELUDE = "import os, time, json\nimport fm_kernel as fm\nfrom distributed import get_client"

# A LocalCluster in a process of its own, so that it outlives the kernels
# (test 3 kills one). It writes its scheduler address to argv[1] and closes
# its workers on SIGTERM.
CLUSTER = r"""
import os, signal, sys, threading
from distributed import LocalCluster
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                  dashboard_address=None) as cluster:
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(cluster.scheduler_address)
    os.replace(tmp, sys.argv[1])
    stop.wait()
"""


def last_json(out: str):
    return json.loads(out.strip().splitlines()[-1])


def marks(path: Path) -> list[tuple[int, float, int]]:
    """(item, time it started, pid of the worker) per line the items wrote."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        i, t, pid = line.split()[:3]
        out.append((int(i), float(t), int(pid)))
    return out


def tasks_of(path: Path) -> dict[int, str]:
    """item -> the Dask task its first run was part of (items sent in one
    chunk share a task)."""
    out: dict[int, str] = {}
    for line in path.read_text().splitlines():
        i, _, _, key = line.split(" ", 3)
        out.setdefault(int(i), key)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Items append "<item> <time> <pid> <task key>" when they start: one line per real run.
ITEMS = r'''
from distributed import get_worker
MARKS = {marks!r}
def item(i):
    with open(MARKS, "a") as f:
        f.write(f"{{i}} {{time.time()!r}} {{os.getpid()}} {{get_worker().get_current_task()}}\n")
    time.sleep({delay})
    return [i * i, os.getpid()]

@fm.flow
def fan(n):
    # The client is looked up by address inside the flow, not closed over: a
    # Client cannot be journaled or restored, and a resumed run needs one.
    return fm.map(item, range(n), concurrency=8, executor=get_client(os.environ["FM_TEST_DASK"]))
'''


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    addr_file, log = d / "address", (d / "cluster.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, str(addr_file)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **QUIET})
    try:
        wait_until(lambda: addr_file.exists() or proc.poll() is not None, 60, "the cluster to start")
        assert proc.poll() is None, (d / "cluster.log").read_text()
        yield addr_file.read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:  # the nannies and workers it started, should any be left
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


def test_thousand_items_from_a_cell_function_run_on_a_local_cluster(tmp_path: Path) -> None:
    """The notebook way: the cluster is started in a cell, the step body is a
    plain function defined in a cell."""
    history = tmp_path / "h" / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history), **QUIET}) as k:
        check(k, PRELUDE)
        pids = last_json(check(k, """
from distributed import LocalCluster, Client
cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)
print(json.dumps(sorted(client.run(os.getpid).values())))
""", timeout=90))
        assert len(pids) == 2
        out = check(k, """
def square(x):                      # defined here: cloudpickled to the workers by value
    return {"x": x, "sq": x * x, "pid": os.getpid()}

@fm.flow
def squares(n):
    return fm.map(square, range(n), executor=client)

run = squares.start(1000)
res = run.result(90)
print(json.dumps([run.id, [r["sq"] for r in res], sorted({r["pid"] for r in res}), os.getpid()]))
""", timeout=120)
        run_id, squares, used, kernel_pid = last_json(out)
        assert squares == [x * x for x in range(1000)]
        assert used == pids and kernel_pid not in used   # the bodies ran on both workers
        check(k, "client.close(); cluster.close()", timeout=60)
        wait_until(lambda: not any(alive(p) for p in pids), 30, "the workers to exit")
    rows = query(history, "SELECT count(*), count(DISTINCT position), min(attempt), max(attempt), "
                          "count(*) FILTER (WHERE status = 'ok') FROM run_steps WHERE run_id = ?", [run_id])
    assert rows == [(1000, 1000, 1, 1, 1000)]
    vals = query(history, "SELECT result->>'sq' FROM run_steps WHERE run_id = ? ORDER BY position", [run_id])
    assert [int(v) for (v,) in vals] == [x * x for x in range(1000)]


def test_worker_killed_mid_map_items_rerun_elsewhere_journaled_once(tmp_path: Path,
                                                                   dask_address: str) -> None:
    history = tmp_path / "h" / "history.duckdb"
    m = tmp_path / "marks"
    n = 300
    with Kernel(env={"FM_HISTORY": str(history), "FM_TEST_DASK": dask_address, **QUIET}) as k:
        check(k, PRELUDE)
        check(k, ITEMS.format(marks=str(m), delay=0.02))
        workers = last_json(check(k, "print(json.dumps(get_client(os.environ['FM_TEST_DASK'])"
                                     ".run(os.getpid)))"))
        run_id = check(k, f"run = fan.start({n})\nprint(run.id)").strip().splitlines()[-1]
        wait_until(lambda: len(marks(m)) >= 60, what="the map to get going")
        victim = Counter(pid for _, _, pid in marks(m)).most_common(1)[0][0]
        assert victim in workers.values()
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        assert len(marks(m)) < n, "the map finished before the kill; make items slower"
        res = last_json(check(k, "print(json.dumps(run.result(90)))", timeout=120))
    assert [sq for sq, _ in res] == [i * i for i in range(n)]
    ran = marks(m)
    assert any(pid == victim for _, _, pid in ran)                 # it did work before dying
    assert all(pid != victim for _, t, pid in ran if t > t_kill + 0.01)
    counts = Counter(i for i, _, _ in ran)
    assert set(counts) == set(range(n))
    again = [i for i, c in counts.items() if c > 1]
    first_pid = {i: pid for i, _, pid in reversed(ran)}
    assert all(first_pid[i] == victim for i in again), again        # only what the dead worker held:
    task = tasks_of(m)
    assert max(counts.values()) <= 2 and len({task[i] for i in again}) <= 8, again  # its tasks in flight
    rows = query(history, "SELECT count(*), count(DISTINCT position), min(attempt), max(attempt), "
                          "count(*) FILTER (WHERE status = 'ok') FROM run_steps WHERE run_id = ?", [run_id])
    assert rows == [(n, n, 1, 1, n)], "each item's result is journaled once, as its first attempt"


def test_kernel_killed_mid_map_resume_submits_only_unrecorded_items(tmp_path: Path,
                                                                    dask_address: str) -> None:
    history = tmp_path / "h" / "history.duckdb"
    env = {"FM_HISTORY": str(history), "FM_TEST_DASK": dask_address, **QUIET}
    m = tmp_path / "marks"
    n = 500
    k = Kernel(env=env)
    try:
        check(k, PRELUDE)
        check(k, ITEMS.format(marks=str(m), delay=0.02))
        run_id = check(k, f"run = fan.start({n})\nprint(run.id)").strip().splitlines()[-1]
        wait_until(lambda: len(marks(m)) >= 150, what="the map to get going")
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    t_kill = time.time()
    # Items already running on the workers finish (their results are lost);
    # queued ones are dropped with the dead client. Wait until nothing moves.
    seen, still = len(marks(m)), time.monotonic()
    while time.monotonic() - still < 1.0:
        time.sleep(0.1)
        if len(marks(m)) != seen:
            seen, still = len(marks(m)), time.monotonic()
    before = marks(m)
    assert len(before) < n, "the map finished before the kill; make items slower"
    t_restart = time.time()
    with Kernel(env=env) as k2:   # resumes the pending run at start
        out = check(k2, f"import fm_kernel as fm, json\nprint(json.dumps(fm.get_run({run_id!r}).result(90)))",
                    timeout=120)
        assert "not restored" not in out, out
        res = last_json(out)
    assert [sq for sq, _ in res] == [i * i for i in range(n)]
    rows = query(history, "SELECT position, epoch(finished_at) FROM run_steps "
                          "WHERE run_id = ? AND status = 'ok' ORDER BY position", [run_id])
    assert len(rows) == n and len({p for p, _ in rows}) == n
    first = rows[0][0]
    recorded = {p - first for p, t in rows if t <= t_kill}          # journaled by the killed kernel
    assert 0 < len(recorded) < n
    after = [i for i, t, _ in marks(m) if t > t_restart]             # submitted by the new kernel
    assert sorted(after) == sorted(set(range(n)) - recorded), \
        "the resumed run must submit exactly the items without a recorded result, once each"
    counts = Counter(i for i, _, _ in marks(m))
    assert all(counts[i] == 1 for i in recorded)                     # recorded items never ran again
    lost = [i for i, _, _ in before if i not in recorded]            # ran, result not yet journaled
    assert all(counts[i] == 2 for i in lost), lost                   # in flight: at-least-once,
    task = tasks_of(m)
    assert len({task[i] for i in lost}) <= 8, lost                   # from the tasks in flight only
    size = Counter(task.values())
    assert any(size[task[i]] > 1 for i in lost), \
        "no chunk of several items was in flight at the kill; make items slower"


def test_step_semantics_hold_on_dask(tmp_path: Path, dask_address: str) -> None:
    history = tmp_path / "h" / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history), "FM_TEST_DASK": dask_address, **QUIET}) as k:
        check(k, PRELUDE)
        out = check(k, f"""
D = {str(tmp_path)!r}
@fm.step(retries=2, retry_delay=0.01)
def flaky(x):
    p = os.path.join(D, f"flaky{{x}}")
    with open(p, "a") as f:
        f.write("x\\n")
    tries = len(open(p).read().splitlines())
    if tries < 2:
        raise ConnectionError(f"down on try {{tries}}")
    return tries

def touch(x):                      # a step with an effect: each call must happen
    with open(os.path.join(D, "touched"), "a") as f:
        f.write(f"{{x}}\\n")
    ctx = fm.step_context()
    return None if ctx is None else ctx.key

@fm.flow
def semantics():
    c = get_client(os.environ["FM_TEST_DASK"])
    return fm.map(flaky, [1, 2], executor=c), fm.map(touch, ["a", "a", "a"], executor=c)

tries, keys = semantics()
# outside a flow fm.map is a plain map, but still on the cluster it is given
pids = fm.map(lambda x: os.getpid(), [1, 2, 3], executor=get_client(os.environ["FM_TEST_DASK"]))
print(json.dumps([tries, keys, open(os.path.join(D, "touched")).read().split(),
                  os.getpid() in pids]))
""", timeout=60)
    tries, keys, touched, ran_here = last_json(out)
    assert not ran_here                         # the executor was used, not threads here
    assert tries == [2, 2]                      # the retry ran the body again
    assert touched == ["a", "a", "a"]           # equal items are three steps, not one task
    assert all(k and k.endswith(f":{p}") for k, p in zip(keys, (3, 4, 5))), keys


def test_items_sent_in_one_chunk_are_steps_of_their_own(tmp_path: Path, dask_address: str) -> None:
    """fm.map sends consecutive items in chunks (one Dask task each); each
    item still runs in its own step context and is journaled at its own
    position; an item failing inside a chunk is retried alone."""
    history = tmp_path / "h" / "history.duckdb"
    m = tmp_path / "marks"
    n, bad = 120, 77
    with Kernel(env={"FM_HISTORY": str(history), "FM_TEST_DASK": dask_address, **QUIET}) as k:
        check(k, PRELUDE)
        out = check(k, ITEMS.format(marks=str(m), delay=0.02) + f"""
@fm.step(retries=1, retry_delay=0.01)
def picky(i):
    key = item(i)
    if i == {bad} and len([l for l in open(MARKS) if l.split()[0] == str(i)]) == 1:
        raise ValueError(f"item {{i}} fails on its first try")
    return [i, fm.step_context().key, get_worker().get_current_task()]

@fm.flow
def chunked(n):
    return fm.map(picky, range(n), concurrency=4, executor=get_client(os.environ["FM_TEST_DASK"]))

run = chunked.start({n})
print(json.dumps([run.id, run.result(90)]))
""", timeout=120)
    run_id, res = last_json(out)
    assert [i for i, _, _ in res] == list(range(n))
    rows = query(history, "SELECT position, attempt, status FROM run_steps WHERE run_id = ? "
                          "ORDER BY position, attempt", [run_id])
    first = rows[0][0]
    assert [key for _, key, _ in res] == [f"{run_id}:{first + i}" for i in range(n)]  # own contexts
    task = tasks_of(m)
    size = Counter(task.values())
    assert max(size.values()) > 1, "every item went out alone: no chunks"
    assert size[task[bad]] > 1, "the failing item was alone in its task; the test needs it in a chunk"
    assert Counter(i for i, _, _ in marks(m)) == Counter({**{i: 1 for i in range(n)}, bad: 2})
    assert [(p - first, a, s) for p, a, s in rows if p - first == bad] == [(bad, 1, "error"), (bad, 2, "ok")]
    assert [(p - first, a, s) for p, a, s in rows if p - first != bad] == \
        [(i, 1, "ok") for i in range(n) if i != bad]          # the chunk mates ran once, journaled once


def test_a_chunk_lost_as_a_whole_is_split_and_no_item_loses_an_attempt(tmp_path: Path) -> None:
    """An item kills its worker once, inside a chunk; with no failures allowed
    Dask fails that whole task (KilledWorker). The chunk's items go out
    again one per task: the map succeeds and every item is journaled once,
    as attempt 1 (the lost chunk was nobody's attempt)."""
    history = tmp_path / "h" / "history.duckdb"
    m = tmp_path / "marks"
    n, poison = 120, 50
    env = {"FM_HISTORY": str(history), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0", **QUIET}
    with Kernel(env=env) as k:
        check(k, PRELUDE)
        check(k, """
from distributed import LocalCluster, Client
cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)
os.environ["FM_TEST_DASK"] = cluster.scheduler_address
""", timeout=90)
        out = check(k, ITEMS.format(marks=str(m), delay=0.02) + f"""
def deadly(i):
    out = item(i)
    if i == {poison} and sum(l.split()[0] == str(i) for l in open(MARKS)) == 1:
        os._exit(1)                       # the worker dies with the chunk
    return out

@fm.flow
def split(n):
    return fm.map(deadly, range(n), concurrency=4, executor=client)

run = split.start({n})
print(json.dumps([run.id, run.result(120)]))
""", timeout=150)
        check(k, "client.close(); cluster.close()", timeout=60)
    run_id, res = last_json(out)
    assert [sq for sq, _ in res] == [i * i for i in range(n)]
    task = tasks_of(m)
    assert Counter(task.values())[task[poison]] > 1, "the item that killed its worker ran alone"
    assert Counter(i for i, _, _ in marks(m))[poison] == 2
    rows = query(history, "SELECT count(*), count(DISTINCT position), min(attempt), max(attempt), "
                          "count(*) FILTER (WHERE status = 'ok') FROM run_steps WHERE run_id = ?", [run_id])
    assert rows == [(n, n, 1, 1, n)]
