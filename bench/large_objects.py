"""Large objects against the disk, baseline measured in the same run:

    .venv/bin/python bench/large_objects.py            # 1 GiB array
    .venv/bin/python bench/large_objects.py --mib 256  # lighter on a loaded machine

  first capture of a new array    vs  write + fsync the same bytes to the same folder
  a 1% edit (one contiguous slice) vs  write + fsync 1% of the bytes there
  rewind to the array before edit vs  read the same bytes back from a file there

Cell times are the client's view (execute_request until the reply), minus a
`pass` cell's time, median of --rounds.  Prints `uptime` with the figures:
the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kernel_driver import Kernel, check  # noqa: E402


def timed(k: Kernel, code: str) -> float:
    t = time.perf_counter()
    check(k, code, timeout=600)
    return time.perf_counter() - t


def disk_write(folder: Path, nbytes: int) -> float:
    buf = os.urandom(min(nbytes, 64 << 20)) * max(1, nbytes // (64 << 20))
    p = folder / "baseline.bin"
    t = time.perf_counter()
    with open(p, "wb") as f:
        f.write(memoryview(buf)[:nbytes])
        f.flush()
        os.fsync(f.fileno())
    took = time.perf_counter() - t
    return took


def disk_read(folder: Path) -> float:
    t = time.perf_counter()
    (folder / "baseline.bin").read_bytes()
    return time.perf_counter() - t


def one_round(folder: Path, n: int) -> dict[str, float]:
    history = folder / "history.duckdb"
    out: dict[str, float] = {}
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, f"import numpy as np\nsrc = np.random.default_rng(0).random({n})")
        empty = min(timed(k, "pass") for _ in range(3))
        out["capture"] = timed(k, "big = src + 0.0") - empty
        step = int(check(k, "print(__import__('fm_kernel').runtime.current().head)").split()[-1])
        out["edit"] = timed(k, f"big[:{n // 100}] += 1.0") - empty
        out["rewind"] = timed(k, f"%fm rewind {step}") - empty
        check(k, "assert np.array_equal(big, src)")
    out["base_write"] = disk_write(folder, n * 8)
    out["base_edit"] = disk_write(folder, n * 8 // 100)
    disk_write(folder, n * 8)
    out["base_read"] = disk_read(folder)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: temp)")
    a = ap.parse_args()
    n = a.mib * (1 << 20) // 8
    rounds = []
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory(dir=a.dir) as d:
            rounds.append(one_round(Path(d), n))
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(f"{a.mib} MiB array, median of {a.rounds}; load: {subprocess.getoutput('uptime').strip()}")
    for what, base, target in (("capture", "base_write", 1.3), ("edit", "base_edit", 1.3),
                               ("rewind", "base_read", 1.3)):
        ratio = med[what] / med[base]
        print(f"  {what:8} {med[what] * 1000:9.1f} ms  baseline {med[base] * 1000:9.1f} ms  "
              f"{ratio:5.2f}x  target <= {target}x  {'PASS' if ratio <= target else 'FAIL'}")


if __name__ == "__main__":
    main()
