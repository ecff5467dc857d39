"""Per-step overhead of durable flows, and fan-out throughput, beside DBOS
Transact (SQLite system database) measured in the same run.

    python bench/step_overhead.py [--dbos-python /tmp/dbos-venv/bin/python] [--rounds 3]

Flowmetal side: in this process, on a fresh history opened with Store (the
same engine a kernel uses; the kernel adds nothing per step). DBOS side:
this same script, run with ``--dbos-side`` by the python of a separate venv
(bench/_dbos.py), never the project's. Results are written to
docs/bench-flows.md by hand from the printed table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _dbos


def flowmetal(n_seq: int, n_fan: int, conc: int) -> dict[str, float]:
    from fm_kernel import flows as fm
    from fm_kernel.record.store import Store

    store = Store.open(Path(tempfile.mkdtemp()) / "history.duckdb")
    j = fm.configure(store, base_url="http://127.0.0.1:0")

    @fm.step
    def triv(i: int) -> int:
        return i

    def plain(i: int) -> int:
        return i

    @fm.flow
    def seq(n: int) -> int:
        for i in range(n):
            triv(i)
        return n

    @fm.flow
    def fan(n: int) -> int:
        return sum(fm.map(triv, range(n), concurrency=conc))

    seq(10)
    t = time.perf_counter()
    for i in range(n_seq):
        plain(i)
    base = time.perf_counter() - t
    t = time.perf_counter()
    seq(n_seq)  # returns after the final checkpoint: all rows are in DuckDB
    total = time.perf_counter() - t
    t = time.perf_counter()
    assert fan(n_fan) == sum(range(n_fan))
    fan_s = time.perf_counter() - t
    rows = store.query("SELECT count(*) FROM run_steps").rows[0][0]
    assert rows >= n_seq + n_fan, rows
    j.close()
    store.close()
    return {"seq_ms_per_step": (total - base) / n_seq * 1000, "fan_steps_per_s": n_fan / fan_s}


def dbos_side(n_seq: int, n_fan: int, conc: int) -> None:
    """Run by the DBOS venv's python (see the module doc); prints one JSON line."""
    DBOS = _dbos.start("fm-bench")

    @DBOS.step()
    def triv(i: int) -> int:
        return i

    def plain(i: int) -> int:
        return i

    @DBOS.workflow()
    def seq(n: int) -> int:
        for i in range(n):
            triv(i)
        return n

    @DBOS.workflow()
    def one(i: int) -> int:
        return triv(i)

    DBOS.launch()
    # the queue's polling interval bounds its throughput; 0.1 s is DBOS's
    # lower bound for a responsive queue without a busy database
    queue = DBOS.register_queue("fan", worker_concurrency=conc, polling_interval_sec=0.1)
    seq(10)  # warm-up
    t = time.perf_counter()
    for i in range(n_seq):
        plain(i)
    base = time.perf_counter() - t
    t = time.perf_counter()
    seq(n_seq)
    total = time.perf_counter() - t
    t = time.perf_counter()
    handles = [queue.enqueue(one, i) for i in range(n_fan)]
    assert sum(h.get_result() for h in handles) == sum(range(n_fan))
    fan = time.perf_counter() - t
    _dbos.report({"seq_ms_per_step": (total - base) / n_seq * 1000,
                  "fan_steps_per_s": n_fan / fan, "fan_n": n_fan})


def main() -> None:
    side = _dbos.side_args()
    if side is not None:
        dbos_side(*(int(a) for a in side[:3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--dbos-python", default=_dbos.DBOS_PYTHON)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=1000)
    ap.add_argument("--fan", type=int, default=10000)
    ap.add_argument("--dbos-fan", type=int, default=1000,
                    help="DBOS fans out through a queue at ~60 workflows/s here; 10,000 would take minutes")
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    fm_runs, dbos_runs = _dbos.rounds(a.rounds, lambda: flowmetal(a.seq, a.fan, a.concurrency),
                                      a.dbos_python, str(Path(__file__).resolve()),
                                      a.seq, a.dbos_fan, a.concurrency)
    fs, ff = _dbos.median(fm_runs, "seq_ms_per_step"), _dbos.median(fm_runs, "fan_steps_per_s")
    ds, df = _dbos.median(dbos_runs, "seq_ms_per_step"), _dbos.median(dbos_runs, "fan_steps_per_s")
    import duckdb

    print(_dbos.machine(dbos_runs, a.rounds, f", duckdb {duckdb.__version__}"))
    print("| measure | flowmetal | DBOS (SQLite) | target |")
    print("|---|---:|---:|---|")
    print(f"| sequential step overhead ({a.seq} trivial steps, one flow) | {fs:.3f} ms | {ds:.3f} ms | "
          f"≤ 1 ms: {'PASS' if fs <= 1 else 'FAIL'}; ≤ 1/3 of DBOS: {'PASS' if fs <= ds / 3 else 'FAIL'} "
          f"({fs / ds:.2f}×) |")
    print(f"| fan-out, concurrency {a.concurrency} (flowmetal {a.fan:,} steps with fm.map; DBOS "
          f"{a.dbos_fan:,} queued workflows) | {ff:,.0f} steps/s | {df:,.0f} steps/s | "
          f"≥ 3,000/s: {'PASS' if ff >= 3000 else 'FAIL'} |")


if __name__ == "__main__":
    main()
