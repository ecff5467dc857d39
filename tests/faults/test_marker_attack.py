"""Attacks on the in-flight marker (fm_kernel/record/recorder.py
InflightMarker), now overwritten in place and padded with spaces: kill -9
while it is written, markers left by much longer records, corrupted and
partial markers, a link planted after the kernel started, a full disk.

The marker's promise: the next kernel learns which step died (recorder.py
recover_interrupted) and which step the dead kernel had acknowledged
(walcheck.acknowledged_step; a history whose log replays short of it is
refused as damaged). A marker must never name a step as committed that was
not. Tests marked ``xfail(strict=True)`` pin a bug found here; each says why."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fm_kernel.record.recorder import InflightMarker
from fm_kernel.record.store import StepRecord
from fm_kernel.record.walcheck import acknowledged_step
from kernel_driver import Kernel, check, query, tmpfs

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a tmpfs, a file of another user)")


def record(step: int, code: str, status: str = "running") -> StepRecord:
    return StepRecord(step=step, branch="main", parent=step - 1, kernel_id="k", cell_id=None,
                      execution_count=step, code=code, status=status,
                      started_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))


# A process that records step 5 as committed, then begins step 6, both with
# long cells (under the 1 MiB walcheck reads): its parent kills it meanwhile.
WRITER = """
import os, sys, time, datetime as dt
from pathlib import Path
from fm_kernel.record.recorder import InflightMarker
from fm_kernel.record.store import StepRecord
def rec(step, code, status):
    return StepRecord(step=step, branch="main", parent=step - 1, kernel_id="k", cell_id=None,
                      execution_count=step, code=code, status=status,
                      started_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
m = InflightMarker(Path(sys.argv[1]))
m.write(rec(5, "a" * 900_000, "ok"), committed=True)
six = rec(6, "b" * 900_000, "running")
os.write(1, b"r")
m.write(six)
os.write(1, b"d")
time.sleep(60)
"""


def writer(history: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(history)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.read(1) == b"r"
    return p


def test_a_kill_while_the_marker_is_written_never_names_an_uncommitted_step(tmp_path: Path):
    """Kills swept across the write of step 6's begin record: the marker
    must say step 5 was the last acknowledged, or nothing."""
    spans = []
    for i in range(5):  # how long the write takes here, now
        p = writer(tmp_path / f"t{i}.duckdb")
        t0 = time.perf_counter()
        assert p.stdout is not None and p.stdout.read(1) == b"d"
        spans.append(time.perf_counter() - t0)
        p.kill()
        p.wait()
    span = sorted(spans)[2]
    found: dict[int | None, int] = {}
    trials = 200
    for i in range(trials):
        history = tmp_path / f"k{i}.duckdb"
        p = writer(history)
        time.sleep(span * 1.2 * i / trials)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        got = acknowledged_step(history)
        found[got] = found.get(got, 0) + 1
        for f in tmp_path.glob(f"k{i}.duckdb*"):
            f.unlink()
    assert set(found) <= {5, None}, found


def test_after_a_much_longer_record_the_marker_names_the_step_that_died(tmp_path: Path):
    """A cell far longer than the next (padding; past TRIM, the cut back),
    then kill -9 while the next runs: the next kernel marks that step
    interrupted and opens the history (no false 'damaged')."""
    history = tmp_path / "h.duckdb"
    for long in (40_000, 300_000):  # within InflightMarker.TRIM of the next record, and past it
        k = Kernel(env={"FM_HISTORY": str(history)})
        check(k, f"s = {'x' * long!r}\nn = len(s)")
        k.kc.execute("import time\ntime.sleep(60)")
        marker = Path(str(history) + ".inflight")
        deadline = time.monotonic() + 30
        while b"time.sleep(60)" not in marker.read_bytes():
            assert time.monotonic() < deadline, "the marker never named the running cell"
            time.sleep(0.05)
        assert len(marker.read_bytes()) >= (long if long < InflightMarker.TRIM else 0)
        k.kill9()
        with Kernel(env={"FM_HISTORY": str(history)}) as k2:
            check(k2, f"assert n == {long}")
        rows = query(history, "SELECT status FROM steps WHERE code = 'import time\ntime.sleep(60)' "
                              "ORDER BY step DESC LIMIT 1")
        assert rows == [("interrupted",)], rows


@pytest.mark.parametrize("content", [
    b"", b"{", b'{"step": 3, "branch": "ma', b"\0" * 5000, b" " * 100_000, b"\xff\xfe garbage",
    b'{"step": "three"}', b"[1, 2, 3]", b'{"step": 2, "fm_committed": false}' + b" " * 70_000 + b"x",
], ids=["empty", "brace", "partial", "zeros", "spaces", "binary", "wrong-type", "list", "trailing"])
def test_a_corrupted_or_partial_marker_neither_blocks_nor_misleads_the_next_kernel(
        tmp_path: Path, content: bytes):
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "a = 1")
        k.kill9()
    Path(str(history) + ".inflight").write_bytes(content)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "assert a == 1\nb = 2")
        check(k, "b += 1")
    assert query(history, "SELECT count(*) FROM steps WHERE status = 'interrupted'") == [(0,)]


def test_the_marker_reads_back_after_records_of_every_length(tmp_path: Path):
    """Longer, shorter, far shorter (past TRIM), longer again: each write
    reads back exactly, committed flag included."""
    m = InflightMarker(tmp_path / "h.duckdb")
    for step, size in enumerate([10, 5000, 100, 200_000, 50, 70_000, 3, 1_000_000, 0], start=1):
        for committed in (False, True):
            rec = record(step, "c" * size)
            m.write(rec, committed=committed)
            got, flag = InflightMarker(tmp_path / "h.duckdb").read_with_commit()
            assert got is not None and (got.step, got.code, flag) == (step, rec.code, committed)
            assert acknowledged_step(tmp_path / "h.duckdb") == (step if committed else step - 1)
    assert os.path.getsize(m.path) <= len(rec.code) + 1000 + InflightMarker.TRIM
    m.clear()


@ROOT
def test_a_link_planted_after_the_start_is_not_written_through(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # another user may plant files (the kernel warns of it)
    history = shared / "h.duckdb"
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file\n" * 50)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "a = 1")
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        link = Path(str(history) + ".inflight")
        assert not os.path.lexists(link)
        os.symlink(precious, link)
        os.lchown(link, 65534, 65534)
        check(k, "x = 1")
        check(k, "x += 1")
    assert precious.read_text() == "the user's own file\n" * 50


@ROOT
def test_a_marker_write_on_a_full_disk_reads_back_or_says_so(tmp_path: Path, caplog):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        m = InflightMarker(disk / "h.duckdb")
        m.write(record(1, "short"))
        with pytest.raises(OSError), open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with caplog.at_level(logging.WARNING, logger="fm_kernel.record.recorder"):
            m.write(record(2, "c" * 9000))
        warned = any("could not write" in r.getMessage() for r in caplog.records)
        got = m.read()
        m.clear()
        assert warned or (got is not None and got.step == 2), (warned, got)
