"""Per-step overhead of durable flows, and fan-out throughput, beside DBOS
Transact (SQLite system database) measured in the same run.

    python bench/step_overhead.py [--dbos-python /tmp/dbos-venv/bin/python] [--rounds 3]

Flowmetal side: in this process, on a fresh history opened with Store (the
same engine a kernel uses; the kernel adds nothing per step). DBOS side:
this same script, run with ``--dbos-side`` by the python of a separate venv (``python -m venv /tmp/dbos-venv &&
/tmp/dbos-venv/bin/pip install dbos``), never the project's. Results are
written to docs/bench-flows.md by hand from the printed table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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
    import os
    from dbos import DBOS, DBOSConfig

    tmp = tempfile.mkdtemp()
    config: DBOSConfig = {"name": "fm-bench", "system_database_url": f"sqlite:///{tmp}/dbos.sqlite"}
    DBOS(config=config)

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
    import dbos

    print(json.dumps({"version": getattr(dbos, "__version__", None) or _version(),
                      "seq_ms_per_step": (total - base) / n_seq * 1000,
                      "fan_steps_per_s": n_fan / fan, "fan_n": n_fan}))
    DBOS.destroy()
    os._exit(0)


def _version() -> str:
    from importlib.metadata import version

    return version("dbos")


def main() -> None:
    if sys.argv[1:2] == ["--dbos-side"]:
        dbos_side(*(int(a) for a in sys.argv[2:5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--dbos-python", default="/tmp/dbos-venv/bin/python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=1000)
    ap.add_argument("--fan", type=int, default=10000)
    ap.add_argument("--dbos-fan", type=int, default=1000,
                    help="DBOS fans out through a queue at ~60 workflows/s here; 10,000 would take minutes")
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    fm_runs, dbos_runs = [], []
    side = str(Path(__file__).resolve())
    for r in range(a.rounds):
        fm_runs.append(flowmetal(a.seq, a.fan, a.concurrency))
        try:
            out = subprocess.run([a.dbos_python, side, "--dbos-side", str(a.seq), str(a.dbos_fan), str(a.concurrency)],
                                 capture_output=True, text=True, timeout=600, cwd=tempfile.mkdtemp())
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

    fs, ff = med(fm_runs, "seq_ms_per_step"), med(fm_runs, "fan_steps_per_s")
    ds, df = med(dbos_runs, "seq_ms_per_step"), med(dbos_runs, "fan_steps_per_s")
    import duckdb

    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs, Python "
          f"{platform.python_version()}, duckdb {duckdb.__version__}, dbos "
          f"{dbos_runs[0]['version'] if dbos_runs else 'n/a'}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"medians of {a.rounds} rounds")
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
