"""Many runs waiting at once on the waits other than fm.sleep (issue 15): a
step's retry backoff, fm.task waiting for its worker, child.result(timeout=...),
fm.map items done in an executor, fm.map items in backoff. What N runs
waiting on each cost one kernel in threads and memory, and how soon after
their release they have all finished. bench/sleeping_runs.py does fm.sleep.

One real flowmetal kernel per kind, on a fresh history. A cell starts N runs
of the kind's flow, waits until all are parked (holding no thread), then
releases them and waits for every result, checking each. The sampler of
sleeping_runs.py reads ``threading.active_count()`` every 10 ms and VmRSS
every 100 ms, from before the first start to the last result. Releases:

    backoff    each run's step fails once; retry_delay = start-up estimate + --wait
               (release: the last retry time)
    task       fm.task("jobs", ...): the cell claims and completes every task
               through the task board (what the HTTP routes call)
    child      the parent does child.result(timeout=3600) on a child that waits
               for a signal (N/2 parents, N/2 children); release: the signals
    map        fm.map of 2 items on an executor whose futures the cell completes
    mapretry   fm.map of 2 items, each failing once (retry as for backoff)

    .venv/bin/python bench/waiting_runs.py                 # N = 2,000, every kind
    .venv/bin/python bench/waiting_runs.py -n 10000 --kinds task,child

Targets (issue 15's, for 10,000 sleeping runs): peak threads <= 50, peak RSS
<= 500 MB, every run finished with its own result (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sleeping_runs import RSS_MAX_MB, SAMPLER, THREADS_MAX  # noqa: E402 - bench/ is on the path

FLOWS = r"""
import collections, concurrent.futures as cf
import fm_kernel as fm
from fm_kernel.flows.context import registry
from fm_kernel.flows.tasks import board
N, DELAY = {n}, {delay}
TRIES = collections.Counter()

@fm.step(retries=1, retry_delay=DELAY)
def flaky(i):
    TRIES[i] += 1
    if TRIES[i] == 1:
        raise RuntimeError("the first attempt fails")
    return i

@fm.flow
def w_backoff(i):
    return flaky(i)

@fm.flow
def w_task(i):
    return fm.task("jobs", {{"i": i}})["i"]

@fm.flow
def kid(i):
    return fm.wait_for("go") + i

@fm.flow
def w_child(i):
    return kid.start(i).result(timeout=3600)

class Elsewhere(cf.Executor):
    def __init__(self):
        self.jobs, self.lock = [], threading.Lock()
    def submit(self, fn, *args):
        f = cf.Future()
        with self.lock:
            self.jobs.append((f, fn, args))
        return f

ELSEWHERE = Elsewhere()

@fm.flow
def w_map(i):
    return sum(fm.map(abs, [i, -i], executor=ELSEWHERE)) // 2

@fm.flow
def w_mapretry(i):
    return sum(fm.map(flaky, [2 * i, 2 * i + 1])) // 4
"""

RELEASE = {
    "backoff": "time.sleep(max(0, t_start + started_s + DELAY - time.time()))",
    "mapretry": "time.sleep(max(0, t_start + started_s + DELAY - time.time()))",
    "task": ("b = board()\nwhile (t := b.claim('jobs', 'bench')) is not None:\n"
             "    b.complete(t['task_id'], t['lease'], t['payload'])"),
    "child": "for k in kids:\n    k.signal('go', 0)",
    "map": ("for f, fn, args in ELSEWHERE.jobs:\n    f.set_running_or_notify_cancel()\n"
            "    f.set_result(fn(*args))"),
}

CELL = r"""
rss_before, threads_before = _rss_mb(), threading.active_count()
t_start = time.time()
runs = [w_{kind}.start(i) for i in range({count})]
started_s = time.time() - t_start
kids = []
if "{kind}" == "child":
    while len(kids) < {count}:
        kids = [r for r in list(registry().runs.values()) if r.flow_name == "kid"]  # live handles
        time.sleep(0.2)
everyone = runs + kids
wait = time.time() + 600
while time.time() < wait and sum(1 for r in everyone if r.parked) < len(everyone):
    time.sleep(0.2)
parked_at_once, threads_parked = sum(1 for r in everyone if r.parked), threading.active_count()
t_release = time.time()
{release}
t_released = time.time()
ok = all(r.result(600) == i for i, r in enumerate(runs))
done = time.time()
_stop.set()
print(json.dumps({{"threads_before": threads_before, "peak_threads": peak["threads"],
                  "threads_parked": threads_parked, "rss_before_mb": rss_before,
                  "peak_rss_mb": peak["rss"], "started_s": started_s, "waiting": len(everyone),
                  "parked_at_once": parked_at_once, "release_s": t_released - t_release,
                  "after_release_s": done - t_released, "ok": ok}}))
"""


def measure(kind: str, n: int, delay: float) -> dict:
    from kernel_driver import Kernel, check

    count = n // 2 if kind == "child" else n
    tmp = Path(tempfile.mkdtemp())
    with Kernel(env={"FM_HISTORY": str(tmp / "history.duckdb")}) as k:
        check(k, SAMPLER + FLOWS.format(n=n, delay=delay))
        out = check(k, CELL.format(kind=kind, count=count, release=RELEASE[kind]), timeout=1800)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="runs waiting at once, per kind")
    ap.add_argument("--kinds", default="backoff,task,child,map,mapretry")
    ap.add_argument("--est", type=float, default=0.002, help="estimated seconds per start")
    ap.add_argument("--wait", type=float, default=5.0, help="backoff beyond the start-up estimate (s)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    delay = a.est * a.n + a.wait
    figures = {kind: measure(kind, a.n, delay) for kind in a.kinds.split(",")}
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; uptime: {up}")
    print(f"N = {a.n:,} runs waiting per kind (child: N/2 parents on N/2 children); "
          f"retry_delay {delay:g}s")
    cols = [("waiting", "{}"), ("parked_at_once", "{}"), ("threads_before", "{}"),
            ("threads_parked", "{}"), ("peak_threads", "{}"), ("rss_before_mb", "{:.0f}"),
            ("peak_rss_mb", "{:.0f}"), ("started_s", "{:.1f}"), ("release_s", "{:.2f}"),
            ("after_release_s", "{:.2f}"), ("ok", "{}")]
    print("| kind | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for kind, f in figures.items():
        print(f"| {kind} | " + " | ".join(fmt.format(f[c]) for c, fmt in cols) + " |")
    bad = [f"{kind}: {what}" for kind, f in figures.items() for what, good in (
        (f"peak threads {f['peak_threads']} > {THREADS_MAX}", f["peak_threads"] <= THREADS_MAX),
        (f"peak RSS {f['peak_rss_mb']:.0f} MB > {RSS_MAX_MB}", f["peak_rss_mb"] <= RSS_MAX_MB),
        ("a result was wrong", f["ok"])) if not good]
    print("\n".join(f"FAIL: {b}" for b in bad) or "PASS: every kind within the targets")
    if a.json:
        Path(a.json).write_text(json.dumps({"figures": figures, "uptime": up}, indent=1))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
