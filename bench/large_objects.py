"""Large objects against the disk, baseline measured in the same run:

    .venv/bin/python bench/large_objects.py            # 1 GiB array
    .venv/bin/python bench/large_objects.py --mib 256  # lighter on a loaded machine

  first capture of a new array    vs  write + fsync the same bytes to the same folder
  a 1% edit (one contiguous slice) vs  write + fsync 1% of the bytes there
  rewind to the array before edit vs  read the same bytes back from a file there
    (the live array is patched: only the chunks that differ are read; then
    the same rewind with the array held elsewhere too, which must read every
    chunk, for information)

Three figures per measure:
  stage   the recording's own time inside the kernel: States.capture (pickle,
          hash, write, the cell's one sync) or States.restore (read, verify,
          unpickle), timed by a probe installed silently (no step);
  added   the client's view (execute_request until the reply) minus the
          cell's own code, timed inside the cell (`src + 1.0` into fresh
          memory is the cell's work, not recording: on this VM memory touched
          for the first time costs 0.3-4 s a GiB, from run to run), minus the
          same in the stock python3 kernel; for the rewind, which python3
          cannot do, the client's view minus a `pass` cell;
  ratio   added / baseline, judged against the target (stage / baseline is shown too).

The new array is `src + 1.0`: new content, so its chunks are really written
(until 2026-12-05 the bench captured `src + 0.0`, whose chunks were all
stored already: nothing was written and the figure was the cell's compute).
Median of --rounds. Prints `uptime` with the figures: the machine may be shared.
"""
from __future__ import annotations

import argparse
import mmap
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


def disk_read_direct(folder: Path) -> float:
    """The same bytes from the disk itself (O_DIRECT, 8 MiB reads into
    aligned memory): what a rewind of chunks written around the page cache
    can at best do with one reader. Information, not the target's baseline."""
    p = folder / "baseline.bin"
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    try:
        t = time.perf_counter()
        out = mmap.mmap(-1, os.fstat(fd).st_size)
        mv, off = memoryview(out), 0
        while off < len(out):
            got = os.readv(fd, [mv[off:off + (8 << 20)]])
            if not got:
                break
            off += got
        took = time.perf_counter() - t
        mv.release()
        return took
    finally:
        os.close(fd)


PROBE = r"""
def _fm_probe():
    import time
    k = get_ipython().kernel
    tl, cur = k.fm.states, {}
    k._fm_probe = cur
    for name in ("capture", "restore"):
        def wrap(orig, name=name):
            def timed(*a, **kw):
                t = time.perf_counter()
                try:
                    return orig(*a, **kw)
                finally:
                    cur[name] = time.perf_counter() - t
            return timed
        setattr(tl, name, wrap(getattr(tl, name)))
_fm_probe()
del _fm_probe
"""


def own(k: Kernel, code: str, probe: str | None = None) -> tuple[float, float, float]:
    """The cell's client time, its code's own time measured inside the cell (a
    dunder name: never part of a state) and, for flowmetal, the probe's time
    of the stage ``probe`` for that cell (read before any other cell runs)."""
    t = timed(k, f"__t__ = time.perf_counter()\n{code}\n__t__ = time.perf_counter() - __t__")
    extra = f", get_ipython().kernel._fm_probe[{probe!r}]" if probe else ""
    got = check(k, f"print(__t__{extra})").split()
    return t, float(got[0]), float(got[1]) if probe else 0.0


def fm_round(folder: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with Kernel(env={"FM_HISTORY": str(folder / "history.duckdb")}) as k:
        check(k, f"import numpy as np, time\nsrc = np.random.default_rng(0).random({n})")
        k.execute(PROBE, silent=True, store_history=False)
        empty = min(timed(k, "pass") for _ in range(3))
        t, code, out["capture_stage"] = own(k, "big = src + 1.0", "capture")
        out["capture"] = t - code
        step = int(check(k, "print(__import__('fm_kernel').runtime.current().head)").split()[-1])
        t, code, out["edit_stage"] = own(k, f"big[:{n // 100}] += 1.0", "capture")
        out["edit"] = t - code
        out["rewind"] = timed(k, f"%fm rewind {step}") - empty
        out["rewind_stage"] = float(check(k, "print(get_ipython().kernel._fm_probe['restore'])").split()[-1])
        check(k, "assert np.array_equal(big, src + 1.0)")
        # the same again with the array also bound to a dunder name (in no
        # state): something else sees it, so no patch: every chunk is read
        check(k, f"__hold__ = big\nbig[:{n // 100}] += 1.0", timeout=600)
        out["rewind_full"] = timed(k, f"%fm rewind {step}") - empty
        out["rewind_full_stage"] = float(
            check(k, "print(get_ipython().kernel._fm_probe['restore'])").split()[-1])
        check(k, "assert np.array_equal(big, src + 1.0) and big is not __hold__\ndel __hold__")
    return out


def py_round(n: int) -> dict[str, float]:
    with Kernel(kernel_name="python3") as k:
        check(k, f"import numpy as np, time\nsrc = np.random.default_rng(0).random({n})")
        new, edit = own(k, "big = src + 1.0"), own(k, f"big[:{n // 100}] += 1.0")
        return {"capture": new[0] - new[1], "edit": edit[0] - edit[1]}


def one_round(folder: Path, n: int) -> dict[str, float]:
    out = fm_round(folder, n)
    py = py_round(n)
    for what in ("capture", "edit"):
        out[f"{what}_py"] = py[what]
        out[what] -= py[what]
    out["base_write"] = disk_write(folder, n * 8)
    out["base_edit"] = disk_write(folder, n * 8 // 100)
    disk_write(folder, n * 8)
    out["base_read"] = disk_read(folder)
    out["base_read_direct"] = disk_read_direct(folder)
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
        print(f"  {what:8} added {med[what] * 1000:7.1f} ms  stage {med[what + '_stage'] * 1000:7.1f} ms  "
              f"baseline {med[base] * 1000:7.1f} ms  {ratio:5.2f}x (stage "
              f"{med[what + '_stage'] / med[base]:4.2f}x)  target <= {target}x  "
              f"{'PASS' if ratio <= target else 'FAIL'}")
    print("  each round, added / baseline: " + "; ".join(
        ", ".join(f"{what} {r[what] / r[base]:.2f}x" for what, base in
                  (("capture", "base_write"), ("edit", "base_edit"), ("rewind", "base_read")))
        for r in rounds))
    print(f"  rewind when the live array is held elsewhere too (not patched, every chunk read): "
          f"added {med['rewind_full'] * 1000:.1f} ms, stage {med['rewind_full_stage'] * 1000:.1f} ms, "
          f"{med['rewind_full'] / med['base_read']:.2f}x the page-cache read, "
          f"{med['rewind_full'] / med['base_read_direct']:.2f}x the disk read (information)")
    print(f"  rewind vs reading the bytes from the disk itself (O_DIRECT, one reader): "
          f"{med['base_read_direct'] * 1000:.1f} ms, {med['rewind'] / med['base_read_direct']:.2f}x (information)")
    print(f"  python3 kernel, same cells, client time beyond the code's own: new array "
          f"{med['capture_py'] * 1000:.1f} ms, 1% edit {med['edit_py'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
