"""Does the timeline widget stay responsive on a long history? Builds a
5,000-step history through the Store API (branches from rewinds and forks
every few hundred steps, some failed and interrupted steps, states with a
handful of variables), then times what a user waits for:

- building `timeline_widget()` (one query, the graph layout of all steps, the
  first page of rows, the HEAD step's details), all branches and this branch;
- turning a page; selecting a step (its record, outputs and variable list).

Target: building the widget <= 1 s (median of the repeats). Exit status 1 if
missed. Widgets are built in this process without a frontend, so comm
messages are not sent; in a kernel each of the ~210 widgets also sends one
comm_open, a few ms in all.

    .venv/bin/python bench/widgets_render.py             # 5,000 steps
    .venv/bin/python bench/widgets_render.py --steps 20000
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fm_kernel.record.recorder import flatten_outputs
from fm_kernel.runtime import Runtime
from fm_kernel.record.store import StepRecord, Store, utcnow
from fm_kernel.state.states import States

TARGET_S = 1.0


def build_history(path: Path, steps: int) -> Runtime:
    store = Store.open(path)
    rt = Runtime(history=path)
    rt.store = store
    rt.ready.set()
    ns: dict = {}
    rt.states = States(store, ns)
    # One real captured state, reused by every step record: the widget reads
    # names and entries per step it shows, not per step in the history.
    exec("import math\nx = 1\nname = 'flowmetal'\nitems = list(range(100))\nratio = 0.5", ns)
    state, new, cap = rt.states.capture("x = 1")
    rt.states.committed(new, cap)
    outputs = flatten_outputs([{"output_type": "stream", "name": "stdout", "text": "ok\n"}])
    branch, parent, forks = "main", None, 0
    for i in range(1, steps + 1):
        n = store.next_step()
        status = "error" if i % 97 == 0 else ("interrupted" if i % 389 == 0 else "ok")
        store.append_step(StepRecord(
            step=n, branch=branch, parent=parent, kernel_id="bench", cell_id=None,
            execution_count=i, code=f"x = {i}  # cell {i}\nprint('ok')", status=status,
            started_at=utcnow(), finished_at=utcnow(), duration_ms=float(i % 250),
            error_name="ValueError" if status == "error" else None,
            outputs=outputs, state=state), new if i == 1 else ())
        parent = n
        if i % 400 == 0:  # rewind a few steps back: the old tip stays as a side line
            store.append_branch(f"{branch}@{n}", n, n)
            parent = n - 5
        if i % 1000 == 0:  # fork a new branch from a step further back
            forks += 1
            branch = f"exp-{forks}"
            store.append_branch(branch, n - 20, n - 20)
            parent = n - 20
    rt.head, rt.branch = parent, branch
    return rt


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from fm_kernel.widgets import timeline_widget

    tmp = Path(tempfile.mkdtemp(prefix="fm-bench-widgets-"))
    try:
        t0 = time.perf_counter()
        rt = build_history(tmp / "history.duckdb", args.steps)
        print(f"built {args.steps:,} steps through the Store API in {time.perf_counter() - t0:.1f} s "
              f"({platform.python_implementation()} {platform.python_version()}, {platform.machine()})")
        timeline_widget(rt=rt).close()  # warm-up: imports, first widget classes

        build_all, _ = timed(lambda: timeline_widget(all_branches=True, rt=rt).close(), args.repeats)
        build_branch, _ = timed(lambda: timeline_widget(rt=rt).close(), args.repeats)
        w = timeline_widget(all_branches=True, rt=rt)
        pages = iter(range(args.repeats * 2))
        page_turn, _ = timed(lambda: w.show_page(next(pages) * 7), args.repeats)
        picks = iter(range(17, 10**9, 731))
        select, _ = timed(lambda: w.select(next(picks) % args.steps + 1), args.repeats)
        w.close()

        rows = [
            ("build timeline_widget(all_branches=True)", build_all, TARGET_S),
            ("build timeline_widget() (this branch)", build_branch, TARGET_S),
            ("turn a page", page_turn, None),
            ("select a step (record, outputs, variables)", select, None),
        ]
        failed = False
        print(f"\n{'measure':<46} {'median':>9}  target")
        for label, value, target in rows:
            verdict = ""
            if target is not None:
                ok = value <= target
                failed |= not ok
                verdict = f"<= {target:.1f} s  {'PASS' if ok else 'FAIL'} ({value / target:.2f}x of target)"
            print(f"{label:<46} {value * 1000:7.0f} ms  {verdict}")
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
