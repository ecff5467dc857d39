"""Does clicking a large past value in the inspector hold up the next cell?

A real flowmetal kernel holds a large numpy array (default 512 MiB) made in
an earlier step. The script opens `inspect_widget()`, presses the array's
name the way a browser does (a `comm_msg` click on the shell channel) and at
once sends a trivial cell. It times, from the client's side:

- the queued cell: from its execute_request to its reply and idle status;
- the value: from the click until the inspector shows the array's stats.

Both are taken twice per round in the same kernel: as shipped (the value
loads on the loader thread) and with the load forced onto the kernel's main
thread, which is how it worked before (`widgets_loader.from_frontend` is
replaced inside the kernel for that half; fm_kernel is not edited). A plain
trivial cell with no click is the floor.

Target: the queued cell waits at most 10% of the load (the click must not
stand between it and the kernel). Exit status 1 if missed.

    .venv/bin/python bench/widget_click.py               # 512 MiB, 5 rounds
    .venv/bin/python bench/widget_click.py --mib 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

TARGET_FRACTION = 0.10
SETUP = """
import numpy as np
from fm_kernel.widgets import inspect_widget
big = np.random.default_rng(0).random({n})
"""


def run(kc, code: str, timeout: float = 300) -> float:
    """Execute ``code``; seconds until its reply and idle status arrived."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    return _wait(kc, msg_id, t0, timeout)


def _wait(kc, msg_id: str, t0: float, timeout: float) -> float:
    idle = reply = None
    while idle is None or reply is None:
        if idle is None:
            m = kc.get_iopub_msg(timeout=timeout)
            if (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"):
                idle = time.perf_counter()
        else:
            m = kc.get_shell_msg(timeout=timeout)
            if m["parent_header"].get("msg_id") == msg_id:
                if m["content"]["status"] != "ok":
                    raise RuntimeError(f"cell failed: {m['content'].get('evalue')}")
                reply = time.perf_counter()
    return max(idle, reply) - t0


def peek(kc, expr: str) -> str:
    msg_id = kc.execute("", silent=True, user_expressions={"v": expr})
    while True:
        m = kc.get_shell_msg(timeout=60)
        if m["parent_header"].get("msg_id") == msg_id:
            return m["content"]["user_expressions"]["v"]["data"]["text/plain"]


def one_click(kc, main_thread: bool) -> tuple[float, float]:
    """Open a fresh inspector, click `big`, queue a cell; (cell s, value s)."""
    run(kc, f"import fm_kernel.widgets.loader as _L\n"
            f"_L.from_frontend = (lambda: False) if {main_thread} else _L._from_frontend\n"
            "i = inspect_widget()\n"
            "_id = next(b.model_id for _, b, _ in i._row_pool if b.description == 'big')")
    button = eval(peek(kc, "_id"))
    t0 = time.perf_counter()
    kc.shell_channel.send(kc.session.msg("comm_msg", {
        "comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}}))
    cell = _wait(kc, kc.execute("pass"), time.perf_counter(), 300)
    while "mean" not in peek(kc, "i.left.value"):
        time.sleep(0.05)
    return cell, time.perf_counter() - t0


def bench(mib: int, rounds: int) -> dict[str, list[float]]:
    tmp = tempfile.mkdtemp(prefix="fm-bench-click-")
    env = {**os.environ, "FM_HISTORY": str(Path(tmp) / "history.duckdb")}
    env.pop("JPY_SESSION_NAME", None)
    km, kc = start_new_kernel(kernel_name="flowmetal", env=env)
    res: dict[str, list[float]] = {"floor": [], "thread cell": [], "thread value": [],
                                   "main cell": [], "main value": []}
    try:
        run(kc, SETUP.format(n=mib * (1 << 20) // 8))
        run(kc, "import fm_kernel.widgets.loader as _L\n_L._from_frontend = _L.from_frontend")
        run(kc, "x = 1")  # `big` is now a past value too
        one_click(kc, False)  # warm-up, not counted: first imports, page cache
        for r in range(rounds):
            res["floor"].append(run(kc, "pass"))
            for main_thread in ((False, True) if r % 2 == 0 else (True, False)):
                cell, value = one_click(kc, main_thread)
                key = "main" if main_thread else "thread"
                res[f"{key} cell"].append(cell)
                res[f"{key} value"].append(value)
            print(f"  round {r + 1}/{rounds}: cell behind a click {res['thread cell'][-1] * 1e3:.1f} ms "
                  f"(main-thread load: {res['main cell'][-1] * 1e3:.0f} ms)", file=sys.stderr)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="size of the past array (MiB)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"Python {platform.python_version()}; array {args.mib} MiB", file=sys.stderr)
    res = bench(args.mib, args.rounds)
    med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
    print(f"\n{'median over ' + str(args.rounds) + ' rounds':40} {'ms':>9}")
    for label, key in [("trivial cell, no click (floor)", "floor"),
                       ("cell queued behind a click: loader thread", "thread cell"),
                       ("cell queued behind a click: main thread", "main cell"),
                       ("click until value shown: loader thread", "thread value"),
                       ("click until value shown: main thread", "main value")]:
        print(f"{label:42} {med[key]:9.1f}")
    ratio = med["thread cell"] / med["main cell"]
    waited = (med["thread cell"] - med["floor"]) / med["thread value"]
    ok = waited <= TARGET_FRACTION
    print(f"\nqueued cell, loader thread / main thread: {ratio:.3f}x")
    print(f"queued cell's added wait as a share of the load: {waited:.1%} "
          f"(target <= {TARGET_FRACTION:.0%}): {'PASS' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
