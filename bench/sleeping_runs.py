"""Many sleeping runs in one kernel (issue 15): what N concurrently sleeping
flow runs cost in threads and memory, and how soon after their wake time they
have all finished.

One real flowmetal kernel (jupyter_client) on a fresh history. A cell starts
N runs of

    @fm.flow
    def napper(i, until):
        fm.sleep(max(1.0, until - fm.now().timestamp()))   # journaled: replay-safe
        return i

all with the same ``until`` (set far enough ahead that every run has started
and parked before it comes: ``--sleep`` seconds after an estimate of the
start-up time), so that all N sleep at once. A sampler thread in the kernel
reads ``threading.active_count()`` every 10 ms and the kernel's RSS
(/proc/self/status VmRSS) every 100 ms, from before the first start until the
last result. Figures: peak threads, peak RSS (and the RSS before), how many
were parked at once, the start-up rate, and the time from ``until`` until
every run had finished (``run.result()`` of each).

    .venv/bin/python bench/sleeping_runs.py              # N = 10,000, sleep ~5 s
    .venv/bin/python bench/sleeping_runs.py -n 2000 --sleep 3

Targets: peak threads <= 50, peak RSS <= 500 MB, every run finished with its
own result (exit 1 otherwise).

DBOS side by side: if ``import dbos`` works in this python, or in the python
given by ``--dbos-python`` (default /tmp/dbos-venv/bin/python, as the other
benchmarks use), the same N workflows (``DBOS.sleep`` to the same kind of
common wake time) run in one process on DBOS's SQLite system database, and
its threads and RSS are sampled the same way. Otherwise the output says DBOS
was not run.
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

THREADS_MAX, RSS_MAX_MB = 50, 500

SAMPLER = r"""
import threading, time, json, os
def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
peak = {"threads": threading.active_count(), "rss": _rss_mb()}
_stop = threading.Event()
def _sample():
    k = 0
    while not _stop.is_set():
        peak["threads"] = max(peak["threads"], threading.active_count())
        if k % 10 == 0:
            peak["rss"] = max(peak["rss"], _rss_mb())
        k += 1
        time.sleep(0.01)
threading.Thread(target=_sample, daemon=True, name="bench-sampler").start()
"""

FM_CELL = r"""
import fm_kernel as fm
@fm.flow
def napper(i, until):
    fm.sleep(max(1.0, until - fm.now().timestamp()))
    return i

rss_before = _rss_mb()
threads_before = threading.active_count()
t0 = time.time()
until = t0 + {est_per_start} * {n} + {sleep}
runs = [napper.start(i, until) for i in range({n})]
started_s = time.time() - t0
while time.time() < until - 0.5 and sum(1 for r in runs if r.parked) < {n}:
    time.sleep(0.2)
parked_at_once = sum(1 for r in runs if r.parked)
ok = all(r.result(600) == i for i, r in enumerate(runs))
done = time.time()
_stop.set()
print(json.dumps({{"threads_before": threads_before, "peak_threads": peak["threads"],
                  "rss_before_mb": rss_before, "peak_rss_mb": peak["rss"], "started_s": started_s,
                  "late_start": time.time() > until and started_s > until - t0,
                  "parked_at_once": parked_at_once, "after_wake_s": done - until, "ok": ok}}))
"""


def flowmetal(n: int, sleep: float, est: float) -> dict:
    from kernel_driver import Kernel, check

    tmp = Path(tempfile.mkdtemp())
    with Kernel(env={"FM_HISTORY": str(tmp / "history.duckdb")}) as k:
        check(k, "1")
        out = check(k, SAMPLER + FM_CELL.format(n=n, sleep=sleep, est_per_start=est), timeout=900)
    return json.loads(out.strip().splitlines()[-1])


def dbos_side(n: int, sleep: float, est: float) -> None:
    """Run by a python that has dbos (see the module doc); prints one JSON line."""
    from importlib.metadata import version

    from dbos import DBOS, DBOSConfig

    ns: dict = {}
    exec(SAMPLER, ns)
    tmp = tempfile.mkdtemp()
    config: DBOSConfig = {"name": "fm-bench-sleep", "system_database_url": f"sqlite:///{tmp}/dbos.sqlite"}
    DBOS(config=config)

    @DBOS.workflow()
    def napper(i: int, until: float) -> int:
        DBOS.sleep(max(1.0, until - time.time()))
        return i

    DBOS.launch()
    rss_before, threads_before = ns["_rss_mb"](), __import__("threading").active_count()
    t0 = time.time()
    until = t0 + est * n + sleep
    handles = [DBOS.start_workflow(napper, i, until) for i in range(n)]
    started_s = time.time() - t0
    ok = all(h.get_result() == i for i, h in enumerate(handles))
    done = time.time()
    ns["_stop"].set()
    print(json.dumps({"version": version("dbos"), "threads_before": threads_before,
                      "peak_threads": ns["peak"]["threads"], "rss_before_mb": rss_before,
                      "peak_rss_mb": ns["peak"]["rss"], "started_s": started_s,
                      "after_wake_s": done - until, "ok": ok}))
    sys.stdout.flush()
    os._exit(0)


def find_dbos(given: str) -> str | None:
    for py in (sys.executable, given):
        if py and Path(py).exists() and subprocess.run([py, "-c", "import dbos"],
                                                       capture_output=True).returncode == 0:
            return py
    return None


def main() -> None:
    if sys.argv[1:2] == ["--dbos-side"]:
        dbos_side(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="runs sleeping at once")
    ap.add_argument("--sleep", type=float, default=5.0, help="seconds all sleep after the last started")
    ap.add_argument("--est", type=float, default=0.001, help="estimated seconds per start")
    ap.add_argument("--dbos-est", type=float, default=0.015,
                    help="DBOS's estimated seconds per start (~14 ms per start_workflow here)")
    ap.add_argument("--dbos-python", default="/tmp/dbos-venv/bin/python")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    fm = flowmetal(a.n, a.sleep, a.est)
    py = find_dbos(a.dbos_python)
    db: dict | None = None
    why = f"dbos is not importable here nor by {a.dbos_python}: DBOS not run"
    if py is not None:
        out = subprocess.run([py, str(Path(__file__).resolve()), "--dbos-side", str(a.n), str(a.sleep),
                              str(a.dbos_est)], capture_output=True, text=True, timeout=1800,
                             cwd=tempfile.mkdtemp())
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if line:
            db = json.loads(line[-1])
        else:
            why = "DBOS side failed: " + (out.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; uptime: {up}")
    print(f"N = {a.n:,} runs, each sleeping until a common wake time {a.sleep:g}s after the "
          f"estimated start-up ({a.est * 1000:g} ms per start; DBOS {a.dbos_est * 1000:g} ms)")
    show = [("threads before", "threads_before", "{:.0f}"), ("peak threads", "peak_threads", "{:.0f}"),
            ("RSS before (MB)", "rss_before_mb", "{:.0f}"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
            ("starting all (s)", "started_s", "{:.1f}"), ("parked at once", "parked_at_once", "{}"),
            ("wake time -> all finished (s)", "after_wake_s", "{:.2f}"), ("all results right", "ok", "{}")]
    print(f"| measure | flowmetal | {'DBOS ' + db['version'] + ' (SQLite)' if db else 'DBOS'} |")
    print("|---|---:|---:|")
    for label, key, fmt in show:
        other = fmt.format(db[key]) if db and key in db else "–"
        print(f"| {label} | {fmt.format(fm[key])} | {other} |")
    if db is None:
        print(why)
    checks = {f"peak threads <= {THREADS_MAX}": fm["peak_threads"] <= THREADS_MAX,
              f"peak RSS <= {RSS_MAX_MB} MB": fm["peak_rss_mb"] <= RSS_MAX_MB,
              "every run finished with its result": fm["ok"]}
    for what, good in checks.items():
        print(f"{'PASS' if good else 'FAIL'}: {what}")
    if a.json:
        Path(a.json).write_text(json.dumps({"flowmetal": fm, "dbos": db, "uptime": up}, indent=1))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
