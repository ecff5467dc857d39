"""Cost of a small cell as the namespace grows (issue 14, "capture cost
O(what the cell touched)"): median and p99 wall time of a cell that touches
one name, with N names defined, in flowmetal against the standard ipykernel
(same run, same machine), plus the time inside ``States.capture`` alone (the
commit's fsync is another engineer's and is being replaced).

    PYTHONPATH=. python bench/namespace_scale.py [--names 200,10000] [--cells 400] [--rounds 1]

The p99 needs enough cells that it is not the one slowest cell: 400 cells
make it the 4th slowest. Before the timed cells each kernel runs WARMUP
untimed ones (the same for both kernels).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_driver import Kernel  # noqa: E402

# Time spent inside States.capture, per cell, kept in the kernel (seconds).
TIMER = """
import time as __t__, fm_kernel.runtime as __rt__
__cap__ = []
__st__ = __rt__.current().states
__orig__ = __st__.capture
def __timed__(code, __o=__orig__):
    t0 = __t__.perf_counter()
    try:
        return __o(code)
    finally:
        __cap__.append(__t__.perf_counter() - t0)
__st__.capture = __timed__
"""


WARMUP = 20


def cells(k: Kernel, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = k.execute(f"v0 = {i}")
        out.append(time.perf_counter() - t0)
        assert r.status == "ok", r.text()
    return out


def p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def run(names: int, n: int, flowmetal: bool) -> dict[str, float]:
    env = {"FM_HISTORY": os.path.join(tempfile.mkdtemp(), "history.duckdb")}
    with (Kernel(env=env) if flowmetal else Kernel(env=env, kernel_name="python3")) as k:
        t0 = time.perf_counter()
        r = k.execute(f"for __i__ in range({names}):\n    globals()[f'v{{__i__}}'] = [__i__]", timeout=600)
        create = time.perf_counter() - t0
        assert r.status == "ok", r.text()
        if flowmetal:
            assert k.execute(TIMER, store_history=False).status == "ok"
        cells(k, WARMUP)
        wall = cells(k, n)
        res = {"create": create, "median": statistics.median(wall), "p99": p(wall, 0.99),
               "max": max(wall)}
        if flowmetal:
            u = k.execute("", user_expressions={"c": "__cap__"}).content["user_expressions"]["c"]
            cap = [float(x) for x in u["data"]["text/plain"].strip("[]").split(",") if x.strip()]
            res["capture_median"] = statistics.median(cap[-n:])
        return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", default="200,10000")
    ap.add_argument("--cells", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=1, help="runs of both kernels per size")
    a = ap.parse_args()
    for names in [int(x) for x in a.names.split(",")]:
        for _ in range(a.rounds):
            base, fm = run(names, a.cells, False), run(names, a.cells, True)
            load = os.getloadavg()[0]
            print(f"{names} names, {a.cells} cells, load {load:.2f}: "
                  f"small cell median {fm['median']*1e3:.1f} ms vs ipykernel {base['median']*1e3:.1f} ms "
                  f"(+{(fm['median']-base['median'])*1e3:.1f} ms, {fm['median']/base['median']:.1f}x); "
                  f"p99/median {fm['p99']/fm['median']:.1f} (ipykernel {base['p99']/base['median']:.1f}; "
                  f"p99 {fm['p99']*1e3:.1f} ms, max {fm['max']*1e3:.0f} ms); "
                  f"capture median {fm['capture_median']*1e3:.1f} ms; "
                  f"creating them {fm['create']:.2f} s vs {base['create']:.2f} s "
                  f"(+{fm['create']-base['create']:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
