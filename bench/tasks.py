"""External tasks over HTTP (issue 16): the round trip of one `fm.task` step
done by a worker process (enqueue -> claim -> complete -> the flow goes on
and enqueues the next) with 1 and with 8 workers, and the throughput of 8
workers over many runs of one task each.

    PYTHONPATH=. .venv/bin/python bench/tasks.py [--sequential 200] [--runs 2000]
        [--workers 8] [--batch 16] [--trials 3]

A real kernel on a fresh history; workers are processes (as real workers
are: threads of one Python would measure its GIL), each with one keep-alive
HTTP connection (no curl: a process per request would measure curl).
Throughput is measured three ways: workers that claim up to ``--batch``
tasks at once (``max_tasks``) and complete them in one request
(``POST /tasks/complete``), the target's figure; workers that claim in
batches and complete one by one; and workers that take one task per
request both ways. The kernel's CPU time per task is printed beside each:
it moves far less with the machine's load than the rates do.

Baseline, in the same run and kernel: the raw HTTP round trip of a trivial
route (``GET /tasks/<id>``: token check, one dict look-up, a JSON answer)
with 1 client, and its requests/s and kernel CPU per request with 8 client
processes. Ratios say what a task costs in such requests; the CPU ratio is
the one the machine's load moves least. The task routes are served by the
endpoint's lean path (fm_kernel/endpoint/lean.py); the same request with a
query string goes through tornado, whose kernel CPU per request is printed
beside it (what every task request cost before the lean path).

Targets: round trip median <= 5 ms, with 1 worker and with 8 workers on 8
flows at once (the median of all trials' round trips); >= 1,000 tasks/s
with 8 workers (the best trial, batched). The load is printed per trial.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
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
def chain(n, queue="seq"):
    for i in range(n):
        fm.task(queue, {"i": i})
    return n

@fm.flow
def one(i):
    return fm.task("fan", {"i": i})
"""
CTX = mp.get_context("fork")


class Worker:
    """One keep-alive connection: claim (long poll), complete."""

    def __init__(self, port: int, token: str, name: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        self.name = name

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        self.conn.request(method, path, None if body is None else json.dumps(body), self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None)

    def claim(self, queue: str, wait: float = 2.0, most: int = 0) -> list[dict]:
        body: dict = {"worker": self.name, "wait": wait}
        if most:
            body["max_tasks"] = most
        status, got = self.call("POST", f"/queues/{queue}/claim", body)
        if status != 200:
            return []
        return got["tasks"] if most else [got]  # type: ignore[index]

    def complete(self, task: dict) -> None:
        status, _ = self.call("POST", f"/tasks/{task['task_id']}/complete",
                              {"lease": task["lease"], "result": task["payload"]})
        assert status == 200, status

    def complete_all(self, tasks: list[dict]) -> None:
        status, got = self.call("POST", "/tasks/complete", {"tasks": [
            {"task_id": t["task_id"], "lease": t["lease"], "result": t["payload"]} for t in tasks]})
        assert status == 200 and all(o["status"] == 200 for o in got["tasks"]), got  # type: ignore[index]


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def kernel_cpu(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


# -- baseline: a trivial route ------------------------------------------------------------

def _hammer(port: int, token: str, path: str, n: int, out) -> None:
    w = Worker(port, token, "base")
    gaps = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = w.call("GET", path)
        gaps.append(time.perf_counter() - t0)
        assert status == 200, status
    out.put(gaps)


def baseline(port: int, token: str, path: str, clients: int, n: int,
             pid: int) -> tuple[list[float], float, float]:
    """Round trips (s) of ``path``, requests/s over ``clients`` processes,
    and the kernel's CPU ms per request."""
    q = CTX.Queue()
    procs = [CTX.Process(target=_hammer, args=(port, token, path, n, q)) for _ in range(clients)]
    cpu0, t0 = kernel_cpu(pid), time.perf_counter()
    for p in procs:
        p.start()
    gaps = [g for _ in procs for g in q.get()]
    for p in procs:
        p.join()
    rate = clients * n / (time.perf_counter() - t0)
    return gaps, rate, (kernel_cpu(pid) - cpu0) / (clients * n) * 1e3


# -- round trip: chains of tasks ----------------------------------------------------------

def _chain_worker(port: int, token: str, queue: str, n: int, out) -> None:
    w = Worker(port, token, queue)
    claimed = []
    for _ in range(n):
        task, = w.claim(queue, wait=10) or [None]
        assert task is not None, "no task within 10 s"
        claimed.append(time.perf_counter())
        w.complete(task)
    out.put([b - a for a, b in zip(claimed, claimed[1:])])


def round_trip(k: Kernel, port: int, token: str, n: int, workers: int) -> list[float]:
    """Seconds between consecutive claims of one flow's n tasks, each flow on
    its own queue with its own worker, ``workers`` of them at once."""
    queues = [f"seq{workers}-{i}" for i in range(workers)]
    r = k.execute(f"cs = [chain.start({n}, q) for q in {queues!r}]")
    assert r.status == "ok", r.text()
    q = CTX.Queue()
    procs = [CTX.Process(target=_chain_worker, args=(port, token, name, n, q)) for name in queues]
    for p in procs:
        p.start()
    gaps = [g for _ in procs for g in q.get()]
    for p in procs:
        p.join()
    r = k.execute("print(sum(c.result(60) for c in cs))")
    assert r.text().strip() == str(n * workers), r.text()
    return gaps


# -- throughput: many runs of one task ----------------------------------------------------

def _work(port: int, token: str, name: str, runs: int, most: int, together: bool, done,
          first) -> None:
    """One worker process: claim (up to ``most`` at once) and complete (one by
    one, or ``together`` in one request) until ``runs`` are done."""
    w = Worker(port, token, name)
    while done.value < runs:
        tasks = w.claim("fan", wait=0.5, most=most)
        if not tasks:
            continue
        with first.get_lock():
            if first.value == 0.0:
                first.value = time.time()
        if together:
            w.complete_all(tasks)
        else:
            for task in tasks:
                w.complete(task)
        with done.get_lock():
            done.value += len(tasks)


def fan(k: Kernel, port: int, token: str, runs: int, workers: int, most: int,
        together: bool = False) -> tuple[float, float]:
    """(tasks/s, kernel CPU ms per task): ``runs`` runs of one task each,
    ``workers`` worker processes, from the first claim to the last completion."""
    r = k.execute(f"rs = [one.start(i) for i in range({runs})]")
    assert r.status == "ok", r.text()
    pid = endpoint_info(Path(k.history))["pid"]  # type: ignore[attr-defined]
    done, first = CTX.Value("i", 0), CTX.Value("d", 0.0)
    procs = [CTX.Process(target=_work, args=(port, token, f"w{i}", runs, most, together, done, first))
             for i in range(workers)]
    cpu0 = kernel_cpu(pid)
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.time() - first.value
    cpu = kernel_cpu(pid) - cpu0
    r = k.execute("print(sum(x.result(60)['i'] for x in rs)); del rs")
    assert r.text().strip() == str(sum(range(runs))), r.text()
    return runs / elapsed, cpu / runs * 1e3


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:.2f} ms, p99 {pctl(xs, 0.99) * 1e3:.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequential", type=int, default=200)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16, help="max_tasks of a throughput claim")
    ap.add_argument("--trials", type=int, default=3)
    a = ap.parse_args()
    history = Path(tempfile.mkdtemp(prefix="fm-bench-tasks-")) / "h.duckdb"
    print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cpus")
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.history = str(history)  # type: ignore[attr-defined]
        assert k.execute(FLOWS).status == "ok"
        info = endpoint_info(history)
        port, token = info["port"], info["token"]
        fan(k, port, token, 100, a.workers, a.batch, True)  # warm up: board, pool, imports
        _, found = Worker(port, token, "bench").call(
            "POST", "/sql", {"query": "SELECT task_id FROM tasks LIMIT 1"})
        tid = found["rows"][0][0]  # type: ignore[index]
        rows = []
        for trial in range(a.trials):
            base1, _, _ = baseline(port, token, f"/tasks/{tid}", 1, 1000, info["pid"])
            _, base_rate, base_cpu = baseline(port, token, f"/tasks/{tid}", a.workers, 500, info["pid"])
            _, _, slow_cpu = baseline(port, token, f"/tasks/{tid}?via=tornado", a.workers, 250,
                                          info["pid"])
            rt1 = round_trip(k, port, token, a.sequential, 1)
            rt8 = round_trip(k, port, token, a.sequential, a.workers)
            both = fan(k, port, token, a.runs, a.workers, a.batch, together=True)
            claims = fan(k, port, token, a.runs, a.workers, a.batch)
            single = fan(k, port, token, a.runs // 2, a.workers, 0)
            rows.append((base1, base_rate, rt1, rt8, both, claims, single))
            print(f"trial {trial + 1} (load {os.getloadavg()[0]:.2f}):")
            print(f"  baseline GET /tasks/<id>: 1 client {ms(base1)}; {a.workers} clients "
                  f"{base_rate:,.0f} requests/s, kernel CPU {base_cpu:.2f} ms/request; through "
                  f"tornado (a query string) {slow_cpu:.2f} ms/request")
            print(f"  round trip, 1 worker:  {ms(rt1)} "
                  f"({statistics.median(rt1) / statistics.median(base1):.1f}x the baseline request)")
            print(f"  round trip, {a.workers} workers: {ms(rt8)} "
                  f"({statistics.median(rt8) / statistics.median(base1):.1f}x)")
            for what, (rate, cpu) in ((f"claims and completions of up to {a.batch}", both),
                                      (f"claims of up to {a.batch}, one completion each", claims),
                                      ("one task per claim and per completion", single)):
                print(f"  throughput, {a.workers} workers, {what}: {rate:,.0f} tasks/s "
                      f"({rate / base_rate:.2f}x the baseline's requests/s), kernel CPU "
                      f"{cpu:.2f} ms/task ({cpu / base_cpu:.1f} baseline requests)")
    rt1 = [g for r in rows for g in r[2]]
    rt8 = [g for r in rows for g in r[3]]
    rates = sorted(r[4][0] for r in rows)
    ok_rt = statistics.median(rt1) <= 5e-3
    ok_rt8 = statistics.median(rt8) <= 5e-3
    ok_rate = rates[-1] >= 1000
    print(f"round trip, 1 worker, all trials: {ms(rt1)}  {'PASS' if ok_rt else 'FAIL'} "
          f"(target median <= 5 ms)")
    print(f"round trip, {a.workers} workers on {a.workers} flows at once, all trials: {ms(rt8)}  "
          f"{'PASS' if ok_rt8 else 'FAIL'} (target median <= 5 ms; trials "
          f"{', '.join(f'{statistics.median(r[3]) * 1e3:.2f}' for r in rows)} ms)")
    print(f"throughput, {a.workers} workers, batches of {a.batch}: best {rates[-1]:,.0f} tasks/s, "
          f"median {statistics.median(rates):,.0f} of {a.trials} trials  "
          f"{'PASS' if ok_rate else 'FAIL'} (target >= 1,000 tasks/s)")
    return 0 if ok_rt and ok_rt8 and ok_rate else 1


if __name__ == "__main__":
    sys.exit(main())
