"""External tasks over HTTP (issue 16): the round trip of one `fm.task` step
done by a worker process (enqueue -> claim -> complete -> the flow goes on
and enqueues the next), and the throughput of W workers over many runs.

    PYTHONPATH=. .venv/bin/python bench/tasks.py [--sequential 200] [--runs 400] [--workers 8]

A real kernel on a fresh history; workers are processes, each with one
keep-alive HTTP connection (no curl: a process per request would measure
curl). Targets: round trip median <= 5 ms; >= 1,000 tasks/s with 8
workers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_driver import Kernel, endpoint_info  # noqa: E402

FLOWS = """
import fm_kernel as fm

@fm.flow
def chain(n):
    for i in range(n):
        fm.task("seq", {"i": i})
    return n

@fm.flow
def one(i):
    return fm.task("fan", {"i": i})
"""


class Worker:
    """One keep-alive connection: claim (long poll), complete."""

    def __init__(self, port: int, token: str, name: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        self.name = name

    def post(self, path: str, body: dict) -> tuple[int, dict | None]:
        self.conn.request("POST", path, json.dumps(body), self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None)

    def claim(self, queue: str, wait: float = 2.0) -> dict | None:
        status, task = self.post(f"/queues/{queue}/claim", {"worker": self.name, "wait": wait})
        return task if status == 200 else None

    def complete(self, task: dict) -> None:
        status, _ = self.post(f"/tasks/{task['task_id']}/complete",
                              {"lease": task["lease"], "result": task["payload"]})
        assert status == 200, status


def sequential(k: Kernel, port: int, token: str, n: int) -> list[float]:
    """Seconds between consecutive claims of one flow's n tasks, one worker."""
    r = k.execute(f"r = chain.start({n})")
    assert r.status == "ok", r.text()
    w = Worker(port, token, "seq")
    claimed = []
    for _ in range(n):
        task = w.claim("seq", wait=10)
        assert task is not None, "no task within 10 s"
        claimed.append(time.perf_counter())
        w.complete(task)
    r = k.execute("print(r.result(60))")
    assert r.text().strip() == str(n), r.text()
    return [b - a for a, b in zip(claimed, claimed[1:])]


def _work(port: int, token: str, name: str, runs: int, done, first) -> None:
    """One worker process: claim and complete until ``runs`` tasks are done."""
    w = Worker(port, token, name)
    while done.value < runs:
        task = w.claim("fan", wait=0.5)
        if task is None:
            continue
        with first.get_lock():
            if first.value == 0.0:
                first.value = time.time()
        w.complete(task)
        with done.get_lock():
            done.value += 1


def fan(k: Kernel, port: int, token: str, runs: int, workers: int) -> float:
    """Tasks per second: ``runs`` runs of one task each, ``workers`` worker
    processes (processes, as real workers are: threads of one Python would
    measure its GIL)."""
    import multiprocessing as mp

    r = k.execute(f"rs = [one.start(i) for i in range({runs})]")
    assert r.status == "ok", r.text()
    ctx = mp.get_context("fork")
    done, first = ctx.Value("i", 0), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_work, args=(port, token, f"w{i}", runs, done, first))
             for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.time() - first.value
    r = k.execute("print(sum(x.result(60)['i'] for x in rs))")
    assert r.text().strip() == str(sum(range(runs))), r.text()
    return runs / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequential", type=int, default=200)
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    history = Path(tempfile.mkdtemp(prefix="fm-bench-tasks-")) / "h.duckdb"
    print(f"load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cpus")
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute(FLOWS).status == "ok"
        info = endpoint_info(history)
        gaps = sequential(k, info["port"], info["token"], a.sequential)
        med, p99 = statistics.median(gaps) * 1e3, sorted(gaps)[int(len(gaps) * 0.99)] * 1e3
        rate = fan(k, info["port"], info["token"], a.runs, a.workers)
        rate1 = fan(k, info["port"], info["token"], a.runs // 4, 1)
    ok_rt, ok_rate = med <= 5.0, rate >= 1000
    print(f"round trip (claim -> complete -> flow goes on -> next claim), 1 worker, "
          f"{a.sequential} tasks: median {med:.2f} ms, p99 {p99:.2f} ms  "
          f"{'PASS' if ok_rt else 'FAIL'} (target median <= 5 ms)")
    print(f"throughput, 1 worker, {a.runs // 4} runs of one task: {rate1:,.0f} tasks/s")
    print(f"throughput, {a.workers} workers, {a.runs} runs of one task: {rate:,.0f} tasks/s  "
          f"{'PASS' if ok_rate else 'FAIL'} (target >= 1,000 tasks/s)")
    return 0 if ok_rt and ok_rate else 1


if __name__ == "__main__":
    sys.exit(main())
