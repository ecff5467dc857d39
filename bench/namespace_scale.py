"""Cost of a small cell as the namespace grows (issue 14, "capture cost
O(what the cell touched)"): median and p99 wall time of a cell that touches
one name, with N names defined, in flowmetal against the standard ipykernel
(same run, same machine), plus the time inside ``States.capture`` alone (the
commit's fsync is another engineer's and is being replaced).

    PYTHONPATH=. python bench/namespace_scale.py [--names 200,10000] [--cells 400] [--rounds 1] [--why] [--gap S]

``--gap`` waits between cells as a user reading the output would: the kernel
re-checks small objects in that idle time (fm_kernel/idle.py) instead of on
the reply path, which is what cells sent back to back still pay.

``--why`` prints, for the slowest 1% of cells, how long garbage collections,
step-log batches into DuckDB and the objects' sync overlapped each.

The p99 needs enough cells that it is not the one slowest cell: 400 cells
make it the 4th slowest. Before the timed cells each kernel runs WARMUP
untimed ones (the same for both kernels).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

# --why: what ran inside the slowest cells, by CLOCK_MONOTONIC intervals taken
# in the kernel (perf_counter is the same clock in both processes on Linux):
# garbage collections, step-log batches into DuckDB, the objects' sync.
WHY = """
import gc as __gc__
__iv__ = []
def __gcb__(phase, info, __s=[0.0]):
    if phase == "start":
        __s[0] = __t__.perf_counter()
    else:
        __iv__.append(("gc%d" % info["generation"], __s[0], __t__.perf_counter()))
__gc__.callbacks.append(__gcb__)
def __wrap__(obj, attr, label):
    orig = getattr(obj, attr)
    def timed(*a, **k):
        t0 = __t__.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            __iv__.append((label, t0, __t__.perf_counter()))
    setattr(obj, attr, timed)
__wrap__(__rt__.current().store._log, "flush", "batch")
__wrap__(__st__.snap.objects, "sync", "sync")
"""


WARMUP = 20


def cells(k: Kernel, n: int, spans: list | None = None, gap: float = 0.0) -> list[float]:
    out = []
    for i in range(n):
        time.sleep(gap)  # a user reading the output: the kernel is idle meanwhile
        t0 = time.perf_counter()
        r = k.execute(f"v0 = {i}")
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if spans is not None:
            spans.append((t0, t1))
        assert r.status == "ok", r.text()
    return out


def why(k: Kernel, spans: list[tuple[float, float]]) -> str:
    """For the slowest 1% of cells: the time each kind of interval overlapped them."""
    u = k.execute("", user_expressions={"i": "__iv__"}).content["user_expressions"]["i"]
    ivs = eval(u["data"]["text/plain"])  # our own kernel's repr of a list of tuples
    slow = sorted(spans, key=lambda s: s[0] - s[1])[:max(1, len(spans) // 100)]
    lines = []
    for t0, t1 in slow:
        parts: dict[str, float] = {}
        for label, a, b in ivs:
            o = min(b, t1) - max(a, t0)
            if o > 0:
                parts[label] = parts.get(label, 0.0) + o
        lines.append(f"  cell {(t1 - t0) * 1e3:.1f} ms: " + (", ".join(
            f"{k} {v * 1e3:.1f} ms" for k, v in sorted(parts.items())) or "none of them"))
    allc = [(lab, (b - a) * 1e3) for lab, a, b in ivs]
    for lab in sorted({x[0] for x in allc}):
        xs = sorted(v for x, v in allc if x == lab)
        lines.append(f"  {lab}: {len(xs)} times, median {statistics.median(xs):.2f} ms, "
                     f"max {xs[-1]:.2f} ms")
    return "\n".join(lines)


def p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def run(names: int, n: int, flowmetal: bool, explain: bool = False, gap: float = 0.0) -> dict[str, Any]:
    env = {"FM_HISTORY": os.path.join(tempfile.mkdtemp(), "history.duckdb")}
    with (Kernel(env=env) if flowmetal else Kernel(env=env, kernel_name="python3")) as k:
        t0 = time.perf_counter()
        r = k.execute(f"for __i__ in range({names}):\n    globals()[f'v{{__i__}}'] = [__i__]", timeout=600)
        create = time.perf_counter() - t0
        assert r.status == "ok", r.text()
        if flowmetal:
            assert k.execute(TIMER, store_history=False).status == "ok"
            if explain:
                assert k.execute(WHY, store_history=False).status == "ok"
        cells(k, WARMUP)
        spans: list[tuple[float, float]] = []
        wall = cells(k, n, spans, gap)
        res = {"create": create, "median": statistics.median(wall), "p99": p(wall, 0.99),
               "max": max(wall)}
        if flowmetal:
            # as JSON: the repr of a long list comes back elided ("...")
            u = k.execute("", user_expressions={"c": "__import__('json').dumps(__cap__)"})
            cap = json.loads(ast.literal_eval(u.content["user_expressions"]["c"]["data"]["text/plain"]))
            res["capture_median"] = statistics.median(cap[-n:])
            if explain:
                res["why"] = why(k, spans)
        return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", default="200,10000")
    ap.add_argument("--cells", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=1, help="runs of both kernels per size")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="seconds between cells (think time: the kernel re-checks small objects then)")
    ap.add_argument("--why", action="store_true",
                    help="print what overlapped the slowest 1%% of cells (gc, batches, syncs)")
    a = ap.parse_args()
    for names in [int(x) for x in a.names.split(",")]:
        for _ in range(a.rounds):
            base, fm = run(names, a.cells, False, gap=a.gap), run(names, a.cells, True, a.why, a.gap)
            load = os.getloadavg()[0]
            print(f"{names} names, {a.cells} cells{f', {a.gap:g} s apart' if a.gap else ''}, load {load:.2f}: "
                  f"small cell median {fm['median']*1e3:.1f} ms vs ipykernel {base['median']*1e3:.1f} ms "
                  f"(+{(fm['median']-base['median'])*1e3:.1f} ms, {fm['median']/base['median']:.1f}x); "
                  f"p99/median {fm['p99']/fm['median']:.1f} (ipykernel {base['p99']/base['median']:.1f}; "
                  f"p99 {fm['p99']*1e3:.1f} ms, max {fm['max']*1e3:.0f} ms); "
                  f"capture median {fm['capture_median']*1e3:.1f} ms; "
                  f"creating them {fm['create']:.2f} s vs {base['create']:.2f} s "
                  f"(+{fm['create']-base['create']:.2f} s)", flush=True)
            if a.why:
                print(fm["why"], flush=True)


if __name__ == "__main__":
    main()
