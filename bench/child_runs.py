"""Child-run overhead (issue 15): a parent flow starts N child runs one after
another and waits for each (start + finish); the figure is the time per child
above the same loop calling a plain function, beside DBOS Transact doing the
same with a child workflow, measured in the same run.

    python bench/child_runs.py [--dbos-python /tmp/dbos-venv/bin/python] [--children 300]

Flowmetal side: in this process, on a fresh history (the engine a kernel
uses). DBOS side: this script with ``--dbos-side``, run by the python of a
separate venv holding dbos (bench/_dbos.py), on SQLite. Targets: ≤ 2 ms per
child and ≥ 5× faster than DBOS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import _dbos


def flowmetal(n: int) -> float:
    from fm_kernel import flows as fm
    from fm_kernel.record.store import Store

    store = Store.open(Path(tempfile.mkdtemp()) / "history.duckdb")
    j = fm.configure(store, base_url="http://127.0.0.1:0")

    @fm.flow
    def kid(i: int) -> int:
        return i

    @fm.flow
    def parent(k: int) -> int:
        return sum(kid.start(i).result() for i in range(k))

    parent(10)  # warm-up
    t = time.perf_counter()
    assert parent(n) == sum(range(n))
    total = time.perf_counter() - t
    t = time.perf_counter()
    sum(i for i in range(n))
    base = time.perf_counter() - t
    kids = store.query("SELECT count(*) FROM runs WHERE flow LIKE '%kid'").rows[0][0]
    assert kids == n + 10, kids
    fm.registry().close()
    j.close()
    store.close()
    return (total - base) / n * 1000


def dbos_side(n: int) -> None:
    """Run by the DBOS venv's python; prints one JSON line."""
    DBOS = _dbos.start("fm-bench-children")

    @DBOS.workflow()
    def kid(i: int) -> int:
        return i

    @DBOS.workflow()
    def parent(k: int) -> int:
        return sum(DBOS.start_workflow(kid, i).get_result() for i in range(k))

    DBOS.launch()
    parent(10)
    t = time.perf_counter()
    assert parent(n) == sum(range(n))
    total = time.perf_counter() - t
    _dbos.report({"ms_per_child": total / n * 1000})


def main() -> int:
    side = _dbos.side_args()
    if side is not None:
        dbos_side(int(side[0]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dbos-python", default=_dbos.DBOS_PYTHON)
    ap.add_argument("--children", type=int, default=300)
    a = ap.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cpus; {a.children} children")
    fm_ms = flowmetal(a.children)
    print(f"flowmetal: {fm_ms:.3f} ms per child run (start + finish + the parent's wait)")
    ok = fm_ms <= 2.0
    if Path(a.dbos_python).exists():
        try:
            dbos_ms = _dbos.run_side(a.dbos_python, str(Path(__file__).resolve()), a.children,
                                     timeout=900)["ms_per_child"]
        except RuntimeError as exc:
            print("DBOS side failed:", exc)
            return 1
        ratio = dbos_ms / fm_ms
        ok = ok and ratio >= 5
        print(f"DBOS (SQLite): {dbos_ms:.3f} ms per child; flowmetal is {ratio:.1f}x faster")
    else:
        print(f"no DBOS at {a.dbos_python}: only the 2 ms target is checked")
    print(f"{'PASS' if ok else 'FAIL'} (targets: <= 2 ms per child, >= 5x DBOS)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
