"""Orphan objects: what a killed or failed state write leaves is reclaimed
(at open and by `fm gc`), and nothing a recorded state names is touched
(record/gc.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, check, query, tmpfs, wait_until  # noqa: E402

FM = str(Path(sys.executable).with_name("fm"))
MB = 1024 * 1024


def loose_bytes(history: Path) -> int:
    """Bytes of the loose chunk files (the big objects) of a history."""
    root = Path(str(history) + ".objects")
    return sum(p.stat().st_size for p in root.glob("??/*") if p.is_file())


def all_bytes(history: Path) -> int:
    root = Path(str(history) + ".objects")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def fm_gc(history: Path) -> str:
    r = subprocess.run([FM, "gc", "--history", str(history)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1, r.stdout  # one line
    return r.stdout.strip()


def checkout_every_step(k: Kernel, steps: list[int]) -> None:
    for step in steps:
        out = check(k, f"%fm checkout {step}")
        assert "not restored" not in out and "cannot load" not in out, (step, out)


def test_kill9_during_a_large_state_write_leaves_nothing_after_reopen(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "import numpy as np\nsmall = [np.arange(3) + i for i in range(200)]")
        check(k, "mid = np.arange(400_000.0)")  # 3.2 MB: loose chunks a state names
        kept = loose_bytes(history)
        k.kc.execute("big = np.arange(25_000_000, dtype=np.float64)")  # 200 MB to store
        wait_until(lambda: loose_bytes(history) > kept + 30 * MB, timeout=120,
                   what="the large state write to be under way")
        k.kill9()
    assert loose_bytes(history) > kept + 30 * MB  # the orphans the kill left
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        status = check(k, "%fm status")
        assert "gc at open" in status and "reclaimed" in status, status
        assert loose_bytes(history) == kept, (loose_bytes(history), kept)
        checkout_every_step(k, [1, 2])
        assert check(k, "print(len(small), small[199][2], mid[-1], 'big' in dir())").split() == \
            ["200", "201", "399999.0", "False"]
    assert "reclaimed 0 B" in fm_gc(history)  # nothing left for a second pass
    statuses = [r[0] for r in query(history, "SELECT status FROM steps ORDER BY step")]
    assert "interrupted" in statuses


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_state_that_filled_the_disk_is_reclaimed(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "64m") as mnt:
        history = mnt / "h.duckdb"
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            check(k, "import numpy as np\nsmall = {'a': np.arange(10)}")
            before = all_bytes(history)
            r = k.execute("huge = np.arange(12_000_000, dtype=np.float64)")  # 96 MB > the disk
            assert r.status == "ok" and "not recorded" in r.text(), r.text()
            assert all_bytes(history) > before + 20 * MB  # what the failed state wrote
            check(k, "del huge\nsmall['b'] = 2")  # later cells commit; the orphans stay known
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            status = check(k, "%fm status")
            assert "gc at open" in status and "reclaimed" in status, status
            assert all_bytes(history) < before + 2 * MB, (all_bytes(history), before)
            checkout_every_step(k, [1])
            assert check(k, "print(small['a'][-1], sorted(small))").split() == ["9", "['a']"]


def test_gc_keeps_what_only_an_old_branch_names(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "import numpy as np\nbase = 1")
        check(k, "old = np.arange(200_000.0) * 3\nnotes = ['only on the old branch']")
        check(k, "%fm rewind 1")
        check(k, "new = 2")  # main goes on from 1; step 2 is now only on main@2
    assert [r[0] for r in query(history, "SELECT name FROM branches ORDER BY name")] == \
        ["main", "main@2"]
    objects = Path(str(history) + ".objects")
    (objects / "ab").mkdir(exist_ok=True)
    orphan = objects / "ab" / ("0" * 30)  # a chunk no record names
    orphan.write_bytes(b"x" * 5000)
    os.utime(orphan, (1, 1))
    line = fm_gc(history)
    assert "reclaimed 4.9 KiB (1 orphan chunk files" in line, line
    assert not orphan.exists()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        out = check(k, "%fm checkout 2")
        assert "not restored" not in out, out
        assert check(k, "print(old[-1], notes[0])").strip() == "599997.0 only on the old branch"


def test_gc_is_refused_while_a_kernel_holds_the_history(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "x = 1")
        r = subprocess.run([FM, "gc", "--history", str(history)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and str(k.pid) in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert check(k, "print(x)").strip() == "1"
