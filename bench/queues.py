"""fm.Queue throughput beside DBOS Transact's queues (SQLite system
database), measured in the same run.

    python bench/queues.py [--dbos-python /tmp/dbos-venv/bin/python] [--rounds 3]

Both sides do the same: a queue with a concurrency limit, N runs of a
one-step flow enqueued in a loop (the enqueue rate: the loop's time, while
the queue already starts runs beside it), then every result waited for
(the start rate: N over the time from the first enqueue to the last
result). Flowmetal side: in this process, on a fresh history opened with
Store (the engine a kernel uses). DBOS side: this script run with
``--dbos-side`` by the python of a separate venv (bench/_dbos.py), never the
project's. Figures go into docs/bench-flows.md by hand.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import _dbos


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
    DBOS = _dbos.start("fm-bench-q")

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
    _dbos.report({"enqueues_per_s": n / enq, "starts_per_s": n / total})


def main() -> None:
    side = _dbos.side_args()
    if side is not None:
        dbos_side(*(int(a) for a in side[:2]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--dbos-python", default=_dbos.DBOS_PYTHON)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=5000, help="runs enqueued per round (flowmetal)")
    ap.add_argument("--dbos-n", type=int, default=1000, help="workflows enqueued per round (DBOS)")
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    fm_runs, dbos_runs = _dbos.rounds(a.rounds, lambda: flowmetal(a.n, a.concurrency),
                                      a.dbos_python, str(Path(__file__).resolve()),
                                      a.dbos_n, a.concurrency)
    med = _dbos.median
    fe, fs = med(fm_runs, "enqueues_per_s"), med(fm_runs, "starts_per_s")
    de, ds = med(dbos_runs, "enqueues_per_s"), med(dbos_runs, "starts_per_s")
    print(_dbos.machine(dbos_runs, a.rounds))
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
