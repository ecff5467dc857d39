"""How long a hand-over between `fm worker` and a kernel takes: the part of
the window senders see 503 or a refused connection that the hand-over
itself adds (a kernel then still starts its endpoint and restores its flows).

Each round: a kernel's opening of the history (record/location.open_history,
in this process, as the kernel runs it) while `fm worker` holds it: asked,
drained, flushed, let go, opened here. Then the history is closed and the
worker takes it back (its endpoint file says "worker" again: the grace, a
new serving process, its restore). The baseline, measured in the same run:
opening the same history when nobody holds it.

    .venv/bin/python bench/handover.py            # ~1 minute on 2 cores
    .venv/bin/python bench/handover.py --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fm_kernel.record.location import open_history
from fm_kernel.record.store import Store

FM = str(Path(sys.executable).parent / "fm")


def endpoint(history: Path) -> dict:
    try:
        return json.loads(Path(str(history) + ".endpoint.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(pred, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out")
        time.sleep(0.01)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fm-handover-"))
    history = folder / "h.duckdb"
    Store.open(history).close()
    base = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        Store.open(history).close()
        base.append(time.perf_counter() - t0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
    worker = subprocess.Popen([FM, "worker", "--history", str(history)], env=env,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: endpoint(history).get("role") == "worker")
        to_kernel, back = [], []
        for i in range(args.rounds):
            wait_for(lambda: endpoint(history).get("role") == "worker")
            time.sleep(0.5)
            t0 = time.perf_counter()
            store, notice = open_history(history, f"bench{i:04d}")
            to_kernel.append(time.perf_counter() - t0)
            assert store.path == history and store.handed_over is not None, notice
            store.close()
            back.append(wait_for(lambda: endpoint(history).get("role") == "worker"))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    load = os.getloadavg()
    med = statistics.median
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"{args.rounds} rounds")
    print(f"open, nobody holding it (baseline): median {1000 * med(base):.1f} ms")
    print(f"open, taken over from fm worker:    median {1000 * med(to_kernel):.0f} ms, "
          f"max {1000 * max(to_kernel):.0f} ms ({med(to_kernel) / med(base):.0f}x the baseline)")
    print(f"worker back after the close:        median {med(back):.1f} s "
          f"(includes its {3.0:g} s grace)")


if __name__ == "__main__":
    main()
