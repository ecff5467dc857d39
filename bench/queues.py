"""fm.Queue throughput beside DBOS Transact's queues (SQLite system
database), measured in the same run.

    python bench/queues.py [--dbos-python /tmp/dbos-venv/bin/python] [--rounds 3]

Both sides do the same: a queue with a concurrency limit, N runs of a
one-step flow enqueued in a loop (the enqueue rate: the loop's time, while
the queue already starts runs beside it), then every result waited for
(the start rate: N over the time from the first enqueue to the last
result). Flowmetal side: in this process, on a fresh history opened with
Store (the engine a kernel uses). DBOS side: this script run with
``--dbos-side`` by the python of a separate venv (as bench/step_overhead.py),
never the project's. Figures go into docs/bench-flows.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def flowmetal(n: int, conc: int) -> dict[str, float]:
    from fm_kernel import flows as fm
    from fm_kernel.record.store import Store

    store = Store.open(Path(tempfile.mkdtemp()) / "history.duckdb")
    fm.configure(store, base_url="http://127.0.0.1:0")
    lock, now, most = threading.Lock(), [0], [0]

    @fm.step
    def triv(i: int) -> int:
        return i

    @fm.flow
    def one(i: int) -> int:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            return triv(i)
        finally:
            with lock:
                now[0] -= 1

    queue = fm.Queue("bench", concurrency=conc)
    t = time.perf_counter()
    runs = [queue.enqueue(one, i) for i in range(n)]
    enq = time.perf_counter() - t
    assert sum(r.result(600) for r in runs) == sum(range(n))
    total = time.perf_counter() - t
    assert most[0] <= conc, most
    done = store.query("SELECT count(*) FROM runs WHERE queue = 'bench' AND status = 'succeeded'")
    assert done.rows[0][0] == n, done.rows
    # the same runs with no queue: what a run costs to start and finish at all
    t = time.perf_counter()
    direct = [one.start(i) for i in range(n)]
    assert sum(r.result(600) for r in direct) == sum(range(n))
    unqueued = n / (time.perf_counter() - t)
    fm.registry().close()
    store.close()
    return {"enqueues_per_s": n / enq, "starts_per_s": n / total, "most_at_once": most[0],
            "unqueued_per_s": unqueued}


def dbos_side(n: int, conc: int) -> None:
    """Run by the DBOS venv's python (see the module doc); prints one JSON line."""
    from dbos import DBOS, DBOSConfig

    tmp = tempfile.mkdtemp()
    config: DBOSConfig = {"name": "fm-bench-q", "system_database_url": f"sqlite:///{tmp}/dbos.sqlite"}
    DBOS(config=config)

    @DBOS.step()
    def triv(i: int) -> int:
        return i

    @DBOS.workflow()
    def one(i: int) -> int:
        return triv(i)

    DBOS.launch()
    # 0.1 s polling: DBOS's lower bound for a responsive queue (bench/step_overhead.py)
    queue = DBOS.register_queue("bench", concurrency=conc, polling_interval_sec=0.1)
    t = time.perf_counter()
    handles = [queue.enqueue(one, i) for i in range(n)]
    enq = time.perf_counter() - t
    assert sum(h.get_result() for h in handles) == sum(range(n))
    total = time.perf_counter() - t
    from importlib.metadata import version

    print(json.dumps({"version": version("dbos"), "enqueues_per_s": n / enq,
                      "starts_per_s": n / total}))
    DBOS.destroy()
    os._exit(0)


def main() -> None:
    if sys.argv[1:2] == ["--dbos-side"]:
        dbos_side(*(int(a) for a in sys.argv[2:4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--dbos-python", default="/tmp/dbos-venv/bin/python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=5000, help="runs enqueued per round (flowmetal)")
    ap.add_argument("--dbos-n", type=int, default=1000, help="workflows enqueued per round (DBOS)")
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    fm_runs, dbos_runs = [], []
    side = str(Path(__file__).resolve())
    have_dbos = Path(a.dbos_python).exists()
    for r in range(a.rounds):
        fm_runs.append(flowmetal(a.n, a.concurrency))
        if have_dbos:
            try:
                out = subprocess.run([a.dbos_python, side, "--dbos-side", str(a.dbos_n),
                                      str(a.concurrency)], capture_output=True, text=True,
                                     timeout=600, cwd=tempfile.mkdtemp())
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if not line:
                    raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "no output")
                dbos_runs.append(json.loads(line[-1]))
            except Exception as exc:
                print(f"DBOS side failed: {exc}", file=sys.stderr)
        print(f"round {r + 1}: flowmetal {fm_runs[-1]}  dbos {dbos_runs[-1] if dbos_runs else None}",
              file=sys.stderr)

    def med(rs: list[dict], k: str) -> float:
        return statistics.median(x[k] for x in rs) if rs else float("nan")

    fe, fs = med(fm_runs, "enqueues_per_s"), med(fm_runs, "starts_per_s")
    de, ds = med(dbos_runs, "enqueues_per_s"), med(dbos_runs, "starts_per_s")
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"dbos {dbos_runs[0]['version'] if dbos_runs else 'n/a'}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; medians of {a.rounds} rounds")
    ratio = fe / de if dbos_runs else float("nan")
    vs = (f"≥ 5× DBOS: {'PASS' if ratio >= 5 else 'FAIL'} ({ratio:.1f}×)" if dbos_runs
          else "≥ 5× DBOS: not measured (no DBOS venv)")
    print("| measure | flowmetal | DBOS (SQLite) | target |")
    print("|---|---:|---:|---|")
    print(f"| enqueue rate (flowmetal {a.n:,} runs, DBOS {a.dbos_n:,} workflows) | {fe:,.0f}/s | "
          f"{de:,.0f}/s | ≥ 2,000/s: {'PASS' if fe >= 2000 else 'FAIL'}; {vs} |")
    print(f"| starts, concurrency {a.concurrency} (enqueue to last result) | {fs:,.0f}/s | "
          f"{ds:,.0f}/s | — ({fs / ds:.1f}×) |" if dbos_runs else
          f"| starts, concurrency {a.concurrency} | {fs:,.0f}/s | — | — |")
    print(f"| the same runs with no queue (flow.start, all at once) | "
          f"{med(fm_runs, 'unqueued_per_s'):,.0f}/s | — | — |")


if __name__ == "__main__":
    main()
