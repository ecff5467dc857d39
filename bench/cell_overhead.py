"""What recording costs: the same cells through the `flowmetal` kernel and the
stock `python3` kernel, both driven through jupyter_client like a frontend.

Each round starts the two kernels one after the other (the order alternates
between rounds, so neither always starts on a warmer machine), then sends the
measured cells to the two live kernels in strict alternation, so that any
background noise lands on both equally. A cell's latency is the client's view:
from sending execute_request until both the execute_reply and the idle status
for it have arrived, which is when a notebook would show the cell as done.

    .venv/bin/python bench/cell_overhead.py            # under 2 minutes on 2 cores
    .venv/bin/python bench/cell_overhead.py --json out.json

    .venv/bin/python bench/cell_overhead.py --fsync    # FM_FSYNC=1: power-loss durable records

Targets: median added latency <= 1 ms for a trivial cell (with --fsync: one
append + fdatasync of a record-sized line in the same folder, measured in the
same run, + 1 ms); kernel start (until the kernel answers kernel_info) <= 1.3x
the stock kernel's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import start_new_kernel

FM, PY = "flowmetal", "python3"
TRIVIAL_TARGET_MS = 1.0
START_TARGET_RATIO = 1.3
BUDGET_S = 110.0  # stop adding rounds past this, so the whole run stays under 2 minutes
CELL_BUDGET_S = 12.0  # measured cells per round, both kernels, all kinds
MIN_CELLS = 20  # per kind, per kernel, per round, whatever the budget says

# Each kind runs after the setup cells before it, in this order; setup cells
# are not measured. The PNG is made once; the figure that made it is dropped,
# so the PNG row measures recording outputs, not capturing a figure. The last
# row puts a live figure in the namespace on purpose: a `pass` cell then shows
# what holding such objects costs on every later cell.
PNG_SETUP = """\
import io
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, display
fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
ax.plot([0, 1, 2, 3], [0, 1, 4, 9])
buf = io.BytesIO()
fig.savefig(buf, format="png")
plt.close(fig)
png = buf.getvalue()
del fig, ax, buf
"""
FIGURE_SETUP = """\
fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
ax.plot([0, 1, 2, 3], [0, 1, 4, 9])
"""

TRIVIAL = "trivial `pass` (empty namespace)"
CELLS: list[tuple[str, str | None, str]] = [  # (label, setup before it, measured cell)
    (TRIVIAL, None, "pass"),
    ("print 100 lines", None, "for i in range(100):\n    print('line', i)"),
    ("display(Image(png)) (png ~3 KB)", PNG_SETUP, "display(Image(png))"),
    ("`pass`, live matplotlib figure in ns", FIGURE_SETUP, "pass"),
]


class Driver:
    """One live kernel and a blocking client on it."""

    def __init__(self, name: str, env: dict[str, str], cwd: str):
        self.name = name
        t0 = time.perf_counter()
        # The kernels' own stderr (ipykernel's TCP warning) would break up the table.
        self.km, self.kc = start_new_kernel(kernel_name=name, env=env, cwd=cwd, startup_timeout=60,
                                            stderr=subprocess.DEVNULL)
        self.start_s = time.perf_counter() - t0
        # flowmetal opens its history in the background after answering
        # kernel_info; the first cell waits for it. Report that separately so
        # "ready" is not mistaken for "usable".
        self.first_cell_s = self.run("pass")

    def run(self, code: str, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        got_reply = got_idle = False
        status = None
        while not (got_reply and got_idle):
            if not got_reply:
                reply = self.kc.get_shell_msg(timeout=timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    got_reply = True
                    status = reply["content"]["status"]
            else:
                msg = self.kc.get_iopub_msg(timeout=timeout)
                if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    got_idle = True
        elapsed = time.perf_counter() - t0
        if status != "ok":
            raise RuntimeError(f"cell failed in {self.name}: {code!r} -> {reply['content']}")
        return elapsed

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def kernel_env(history: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME")}
    env["FM_HISTORY"] = str(history)  # the python3 kernel ignores it
    return env


def versions() -> dict[str, str]:
    import duckdb
    import ipykernel

    return {
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "ipykernel": ipykernel.__version__,
    }


def fsync_ms(folder: str, n: int = 200) -> float:
    """Median of one append of a record-sized line + fdatasync, in ``folder``."""
    path = Path(folder) / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 600 + b"\n")
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1e3


def bench(rounds: int, cells: int, warmup: int, fsync: bool = False) -> dict[str, Any]:
    began = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="fm-bench-")
    # One history for the whole run, as a notebook reopened several times.
    env = kernel_env(Path(tmp) / "history.duckdb")
    if fsync:
        env["FM_FSYNC"] = "1"
    lat: dict[str, dict[str, list[float]]] = {label: {FM: [], PY: []} for label, _, _ in CELLS}
    starts: dict[str, list[float]] = {FM: [], PY: []}
    first: dict[str, list[float]] = {FM: [], PY: []}
    done = 0
    try:
        done = _rounds(rounds, cells, warmup, env, tmp, began, lat, starts, first)
        probe = fsync_ms(tmp) if fsync else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rounds": done, "cells_per_round": cells, "latency_s": lat, "start_s": starts,
            "fsync_ms": probe,
            "first_cell_s": first, "total_s": time.perf_counter() - began, "versions": versions()}


def _rounds(rounds: int, cells: int, warmup: int, env: dict[str, str], tmp: str, began: float,
            lat: dict[str, dict[str, list[float]]], starts: dict[str, list[float]],
            first: dict[str, list[float]]) -> int:
    done = 0
    for r in range(rounds):
        order = (FM, PY) if r % 2 == 0 else (PY, FM)
        drivers: dict[str, Driver] = {}
        try:
            for name in order:
                drivers[name] = Driver(name, env, tmp)
                starts[name].append(drivers[name].start_s)
                first[name].append(drivers[name].first_cell_s)
            for label, setup, code in CELLS:
                for d in drivers.values():
                    if setup:
                        d.run(setup)
                    for _ in range(warmup):
                        d.run(code)
                # A slow kernel gets fewer samples rather than a longer run.
                stop_at = time.perf_counter() + CELL_BUDGET_S / len(CELLS)
                for i in range(cells):
                    pair = order if i % 2 == 0 else order[::-1]
                    for name in pair:
                        lat[label][name].append(drivers[name].run(code))
                    if i >= MIN_CELLS and time.perf_counter() > stop_at:
                        break
        finally:
            for d in drivers.values():
                d.shutdown()
        done += 1
        elapsed = time.perf_counter() - began
        per_round = elapsed / done
        print(f"  round {done}/{rounds} done ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        if done >= 5 and elapsed + per_round > BUDGET_S:
            break
    return done


def summarise(res: dict[str, Any]) -> tuple[list[list[str]], bool]:
    med = statistics.median
    rows: list[list[str]] = []
    ok = True
    for label, by in res["latency_s"].items():
        fm, py = med(by[FM]) * 1e3, med(by[PY]) * 1e3
        added = fm - py
        verdict = ""
        if label == TRIVIAL:
            target = TRIVIAL_TARGET_MS + (res["fsync_ms"] or 0.0)
            passed = added <= target
            ok &= passed
            verdict = f"{'PASS' if passed else 'FAIL'} (target <= {target:.2f} ms added)"
        rows.append([f"cell: {label}", f"{py:.2f} ms", f"{fm:.2f} ms", f"{added:+.2f} ms",
                     f"{fm / py:.2f}x", verdict])
    fm, py = med(res["start_s"][FM]), med(res["start_s"][PY])
    passed = fm / py <= START_TARGET_RATIO
    ok &= passed
    rows.append(["kernel start (until ready)", f"{py * 1e3:.0f} ms", f"{fm * 1e3:.0f} ms",
                 f"{(fm - py) * 1e3:+.0f} ms", f"{fm / py:.2f}x",
                 f"{'PASS' if passed else 'FAIL'} (target <= {START_TARGET_RATIO:g}x)"])
    fm, py = med(res["first_cell_s"][FM]), med(res["first_cell_s"][PY])
    rows.append(["first `pass` after ready", f"{py * 1e3:.1f} ms", f"{fm * 1e3:.1f} ms",
                 f"{(fm - py) * 1e3:+.1f} ms", f"{fm / py:.2f}x", "(info)"])
    return rows, ok


def print_table(rows: list[list[str]]) -> None:
    head = ["measure (median)", PY, FM, "added", "ratio", "target"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(fmt(head))
    print(line)
    for r in rows:
        print(fmt(r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="kernel pairs started (>= 5 for the start median)")
    ap.add_argument("--cells", type=int, default=100, help="measured cells per kind, per kernel, per round")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured cells per kind after setup")
    ap.add_argument("--json", type=Path, help="also write raw samples here")
    ap.add_argument("--fsync", action="store_true",
                    help="flowmetal with FM_FSYNC=1; the target adds one fsync measured here")
    args = ap.parse_args(argv)

    res = bench(args.rounds, args.cells, args.warmup, args.fsync)
    v = res["versions"]
    n = min(len(by[FM]) for by in res["latency_s"].values())
    print(f"\ncell overhead: {res['rounds']} rounds, >= {n} cells per kind per kernel, "
          f"{res['rounds']} starts per kernel, {res['total_s']:.0f} s in all")
    print(f"{v['machine']}, {v['cpus']} cpus, python {v['python']}, duckdb {v['duckdb']}, "
          f"ipykernel {v['ipykernel']}")
    if res["fsync_ms"] is not None:
        print(f"FM_FSYNC=1; one append + fdatasync in the same folder: {res['fsync_ms']:.2f} ms")
    print()
    rows, ok = summarise(res)
    print_table(rows)
    print(f"\nall targets met: {'yes' if ok else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
