"""Garbage collection and capture time of one-name cells with 10,000 names,
in one process (issue 14: "p99 of small cells ≤ 3× the median"): a real
Store with its step log and States, as the kernel drives them, without a
kernel or client around, so the machine's load moves the figures less than
bench/namespace_scale.py's. Prints the pauses of each collector generation
(gc.callbacks) and the capture-and-append time per cell. Compare two
checkouts by running it under each:

    PYTHONPATH=<checkout> python bench/capture_gc.py [--cells 1000] [--names 10000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

from fm_kernel.record import trust
from fm_kernel.record.rows import StepRecord
from fm_kernel.record.store import Store
from fm_kernel.state.states import States

WARMUP = 30


def cell(store: Store, states: States, step: int, code: str) -> float:
    """Capture and append one step as the kernel does; its wall time."""
    t0 = time.perf_counter()
    state, entries, cap = states.capture(code)
    now = dt.datetime.now(dt.timezone.utc)
    rec = StepRecord(step=step, branch="main", parent=step - 1 or None, kernel_id="k", cell_id=None,
                     execution_count=step, code=code, status="ok", started_at=now, finished_at=now,
                     duration_ms=1.0, outputs=[], state=state)
    store.append_step(rec, entries)
    states.committed(entries, cap, step)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--names", type=int, default=10000)
    args = ap.parse_args()
    store = Store.open(Path(tempfile.mkdtemp()) / "history.duckdb")
    trust.stamp_origin(store)
    ns: dict = {"__name__": "__main__", **{f"v{i}": [i] for i in range(args.names)}}
    states = States(store, ns)
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    for step in range(1, WARMUP):
        ns["v0"] = step
        cell(store, states, step, "v0 = 1")
    gc.callbacks.append(timed)
    walls = []
    for step in range(WARMUP, WARMUP + args.cells):
        ns["v0"] = step
        walls.append(cell(store, states, step, "v0 = 1"))
    gc.callbacks.remove(timed)
    store.close()
    walls.sort()
    print(f"{args.names} names, {args.cells} cells, load {os.getloadavg()[0]:.1f}: "
          f"capture+append median {statistics.median(walls) * 1e3:.2f} ms, "
          f"p99 {walls[int(.99 * len(walls))] * 1e3:.2f} ms; " + "; ".join(
              f"gen{g}: {len(v)} pauses, median {statistics.median(v) * 1e3:.2f} ms, "
              f"max {max(v) * 1e3:.2f} ms, total {sum(v) * 1e3:.0f} ms"
              for g, v in pauses.items() if v), flush=True)


if __name__ == "__main__":
    main()
