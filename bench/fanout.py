"""fm.map fan-out of CPU-bound steps: the default thread executor against a Dask
LocalCluster of 2 worker processes, in one real flowmetal kernel.

Each step body is a pure-Python loop calibrated (in the kernel) to ~20 ms; it
holds the GIL, so the thread executor runs one body at a time whatever its
concurrency, while two worker processes run two. Each round runs the flow once
per executor (order alternating between rounds); every item is a journaled
step in both. Wall time is measured in the kernel around the direct flow call,
so it includes submitting, (de)serialising, journaling and the final flush.

    .venv/bin/python bench/fanout.py                      # 200 items x 20 ms, 3 rounds
    .venv/bin/python bench/fanout.py --items 400 --ms 10 --rounds 5 --json raw.json

A third row runs the same bodies with `client.gather(client.map(...))` and no
flow at all: what Dask itself reaches on this machine, the ceiling for fm.map.

Target: Dask speed-up >= 1.5x with 2 workers (exit 1 otherwise). Needs
`distributed` in the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kernel_driver import Kernel  # noqa: E402

TARGET = 1.5

SETUP = r"""
import os, time, json
import fm_kernel as fm
from distributed import LocalCluster, Client

def spin(n):
    acc = 0
    for k in range(n):
        acc = (acc * 31 + k) % 1000003
    return acc

def calibrate(ms):
    n = 200_000
    while True:
        t0 = time.perf_counter(); spin(n); dt = time.perf_counter() - t0
        if dt > 0.05:
            break
        n *= 2
    best = min((lambda t0: (spin(n), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
    return int(n * ms / 1000 / best)

# calibrated before the cluster starts, on an idle kernel: best of 5
N_SPIN = calibrate({ms})

cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)

def burn(i):                     # a cell-defined, CPU-bound step body
    return [i, spin(N_SPIN), os.getpid()]

@fm.flow
def fanout_threads(n):
    return fm.map(burn, range(n), concurrency=8)

@fm.flow
def fanout_dask(n):
    return fm.map(burn, range(n), concurrency={conc}, executor=client)

def fanout_raw(n):               # Dask alone, no flow, no journal: this machine's ceiling
    return client.gather(client.map(burn, range(n), pure=False))

def timed(fl, n):
    t0 = time.perf_counter(); out = fl(n); wall = time.perf_counter() - t0
    assert [r[0] for r in out] == list(range(n))
    return wall, len({{r[2] for r in out}})

# one body, alone, in the kernel and on a worker
body_kernel = min((lambda t0: (spin(N_SPIN), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(3))
body_worker = client.submit(lambda: (lambda t0: (spin(N_SPIN), time.perf_counter() - t0)[1])(time.perf_counter()),
                            pure=False).result()
fanout_dask(4)                   # warm-up: workers import and unpickle once
print(json.dumps({{"n_spin": N_SPIN, "body_kernel_ms": body_kernel * 1e3, "body_worker_ms": body_worker * 1e3,
                  "workers": sorted(client.run(os.getpid).values())}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--ms", type=float, default=20.0, help="CPU time per step body")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8, help="fm.map's concurrency with Dask")
    ap.add_argument("--json", type=Path, help="also write every sample here")
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fm-bench-fanout-") as tmp:
        env = {"FM_HISTORY": str(Path(tmp) / "history.duckdb"), "DASK_LOGGING__DISTRIBUTED": "error"}
        with Kernel(env=env) as k:
            def run(code: str, timeout: float = 300) -> str:
                r = k.execute(code, timeout=timeout)
                if r.status != "ok":
                    raise SystemExit(f"cell failed: {r.content.get('ename')}: {r.content.get('evalue')}\n{code}")
                return r.text()

            info = json.loads(run(SETUP.format(ms=args.ms, conc=args.concurrency)).strip().splitlines()[-1])
            samples: dict[str, list[float]] = {"threads": [], "dask": [], "raw": []}
            names = list(samples)
            for rnd in range(args.rounds):
                order = names[rnd % 3:] + names[:rnd % 3]  # each goes first in turn
                for name in order:
                    wall, procs = json.loads(run(
                        f"print(json.dumps(timed(fanout_{name}, {args.items})))").strip().splitlines()[-1])
                    samples[name].append(wall)
                    print(f"round {rnd + 1} {name:8s} {wall:7.2f} s  ({procs} process(es) ran bodies)",
                          flush=True)
            run("client.close(); cluster.close()", timeout=60)

    thr, dsk = statistics.median(samples["threads"]), statistics.median(samples["dask"])
    speedup = thr / dsk
    ideal = args.items * info["body_kernel_ms"] / 1e3
    print()
    print(f"load avg before the kernel started {load0:.2f} (other processes on the machine skew this)")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"{args.items} items x {info['body_kernel_ms']:.1f} ms CPU (on a worker alone: "
          f"{info['body_worker_ms']:.1f} ms); serial sum of bodies {ideal:.2f} s; {args.rounds} rounds, median")
    bthr, bdsk = min(samples["threads"]), min(samples["dask"])
    print(f"{'executor':30s} {'median s':>9s} {'best s':>8s} {'items/s':>8s}")
    print(f"{'threads (concurrency=8)':30s} {thr:9.2f} {bthr:8.2f} {args.items / thr:8.1f}")
    print(f"{'dask LocalCluster 2 procs':30s} {dsk:9.2f} {bdsk:8.2f} {args.items / dsk:8.1f}")
    raw = statistics.median(samples["raw"])
    print(f"{'  client.map alone (ceiling)':30s} {raw:9.2f} {min(samples['raw']):8.2f} {args.items / raw:8.1f}")
    print(f"fm.map over Dask takes {dsk / raw:.2f}x the time of Dask alone "
          f"(journaling, step contexts, retries); Dask alone is {thr / raw:.2f}x the threads")
    ok = speedup >= TARGET
    print(f"speed-up {speedup:.2f}x median, {bthr / bdsk:.2f}x best (target >= {TARGET}x, median): "
          f"{'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "samples": samples, "speedup": speedup, "raw": raw,
                                         "items": args.items, "ms": args.ms, "load0": load0}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
