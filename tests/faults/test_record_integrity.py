"""The record never lies: a write-ahead log DuckDB cannot replay, a full
disk under the record itself, a truncated database, a machine id that
cannot be stored, flow records a crash left in the flowlog. Each with real
kernels, real files, kill -9 and a real tmpfs: no acknowledged step is
silently gone, step numbers have no gaps, and every substitute is named in
one line."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, check, fm_cli, query, tmpfs  # noqa: E402

STEPS = 12


def killed_with_steps_in_the_log(history: Path, wal_only: bool = True) -> bytes:
    """STEPS acknowledged cells, then kill -9. A read (``%fm status``) moves
    them from the step log into DuckDB, so they are in DuckDB's WAL (DuckDB
    checkpoints at 16 MB or at a clean close, neither happened) and in the
    step log. ``wal_only``: the step log is then lost as well (the damage
    took both), so DuckDB's log is the only source."""
    steplog = Path(str(history) + ".steplog")
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        for i in range(STEPS):
            check(k, f"v{i} = {i} * 2 + len('{'x' * 3000}')")
        check(k, "%fm status")
        k.kill9()
    assert steplog.stat().st_size > STEPS * 3000, "the step log keeps what only the WAL has"
    if wal_only:
        steplog.unlink()
    wal = Path(str(history) + ".wal")
    assert wal.stat().st_size > 20_000, "the steps must be in the write-ahead log"
    return wal.read_bytes()


def substitute_line(text: str, history: Path) -> tuple[Path, Path | None]:
    """The one line: the damaged history left alone, the copy, the substitute."""
    found = [ln for ln in text.splitlines() if f"{history} is damaged" in ln]
    assert len(found) == 1, text
    m = re.search(r"records to (\S+)$", found[0])
    assert m, found[0]
    kept = re.search(r"copied to (\S+?);", found[0])
    return Path(m.group(1)), Path(kept.group(1)) if kept else None


DAMAGE = {
    # DuckDB replays a log cut at an odd place up to the cut and says nothing
    "cut": lambda log: log[:len(log) // 2 + 7],
    # bytes flipped or zeroed in the middle: DuckDB fails its checksum at open
    "flipped": lambda log: log[:len(log) // 2] + bytes(b ^ 0xFF for b in log[len(log) // 2:][:16])
    + log[len(log) // 2 + 16:],
    "zeroed": lambda log: log[:len(log) // 2] + bytes(len(log) - len(log) // 2),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_log_is_kept_and_named_never_dropped(tmp_path: Path, damage: str) -> None:
    history = tmp_path / "h.duckdb"
    log = DAMAGE[damage](killed_with_steps_in_the_log(history))
    Path(str(history) + ".wal").write_bytes(log)
    before = history.read_bytes()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("x = 1")
        assert r.status == "ok"
        alt, kept = substitute_line(r.text(), history)
        if damage == "cut":  # the silent case: found by the acknowledged step count
            assert re.search(rf"replayed to step \d+ of {STEPS}\b", r.text()), r.text()
        else:
            assert "WAL" in r.text(), r.text()
        assert kept is not None and kept.read_bytes() == log  # the log as it was found
        assert oct(kept.stat().st_mode & 0o777) == "0o600"
        assert alt != history and alt.parent == history.parent
        assert str(alt) in check(k, "%fm status")
        assert "damaged" not in check(k, "y = 2")  # said once
    assert history.read_bytes() == before  # never checkpointed into, nothing appended
    assert query(alt, "SELECT code FROM steps ORDER BY step") == [("x = 1",), ("y = 2",)]
    with Kernel(env={"FM_HISTORY": str(history)}) as k:  # still damaged: said again
        assert f"{history} is damaged" in k.execute("z = 3").text()
    assert kept.read_bytes() == log  # the first copy, the fullest, is kept


def test_a_cut_wal_loses_nothing_the_step_log_still_holds(tmp_path: Path) -> None:
    """The step log is a second source: steps acknowledged since the last
    batch are in it as well as in DuckDB's WAL; with the WAL cut short, the
    next kernel replays them from the step log and has nothing to report."""
    history = tmp_path / "h.duckdb"
    log = killed_with_steps_in_the_log(history, wal_only=False)
    Path(str(history) + ".wal").write_bytes(DAMAGE["cut"](log))
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("print(v11)")
        assert r.status == "ok" and "damaged" not in r.text(), r.text()
    assert query(history, "SELECT count(*), max(step) FROM steps WHERE status = 'ok'") == \
        [(STEPS + 1, STEPS + 1)]


def test_an_intact_log_replays_every_step_and_says_nothing(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    killed_with_steps_in_the_log(history)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("print(v11)")
        assert r.status == "ok" and "damaged" not in r.text(), r.text()
    assert query(history, "SELECT count(*), max(step) FROM steps WHERE status = 'ok'") == \
        [(STEPS + 1, STEPS + 1)]
    assert not Path(str(history) + ".wal.damaged").exists()


def test_a_truncated_database_gets_a_named_substitute_and_status_works(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        for i in range(40):
            check(k, f"w{i} = '{'y' * 5000}'")
    size = history.stat().st_size
    os.truncate(history, size // 2)
    cut = history.read_bytes()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("x = 1")
        assert r.status == "ok"
        alt, _ = substitute_line(r.text(), history)
        assert alt.parent == history.parent and alt != history
        status = check(k, "%fm status")
        assert str(alt) in status, status
        check(k, "%fm log")
    assert history.read_bytes() == cut  # kept as it was, beside the substitute
    assert query(alt, "SELECT code FROM steps") == [("x = 1",)]


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    with tmpfs(tmp_path / "small", "8m") as mnt:
        yield mnt


def test_a_record_the_full_disk_refused_leaves_no_gap_in_step_numbers(small_disk: Path) -> None:
    history = small_disk / "h.duckdb"
    filler = small_disk / "filler"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        for i in range(3):
            check(k, f"a{i} = {i}")
        with open(filler, "wb", buffering=0) as f:  # every free block; unbuffered, so closing it
            # has no bytes left to write (the last, refused write stays refused)
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        # 2 MB of output: the step record itself is what cannot be written
        lost = k.execute("print('ran', 'z' * 2_000_000)")
        assert lost.status == "ok" and "ran" in lost.text()
        assert "could not record this cell" in lost.text(), lost.text()
        filler.unlink()
        for i in range(3):
            check(k, f"b{i} = {i}")
        check(k, "%fm status")
    steps = query(history, "SELECT step, code, status FROM steps ORDER BY step")
    assert [s[0] for s in steps] == list(range(1, len(steps) + 1)), steps  # contiguous
    codes = [s[1] for s in steps]
    assert codes[:3] == ["a0 = 0", "a1 = 1", "a2 = 2"] and codes[-3:] == ["b0 = 0", "b1 = 1", "b2 = 2"]
    assert all(s[2] == "ok" for s in steps)


def test_the_kernels_own_history_stays_its_own_across_kernels_without_a_stored_machine_id(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "flowmetal").write_text("")  # a file in the way: no id can be stored there, even by root
    (tmp_path / "tmp").mkdir()
    env = {"FM_HISTORY": str(tmp_path / "h" / "h.duckdb"), "XDG_DATA_HOME": str(data),
           "TMPDIR": str(tmp_path / "tmp")}
    with Kernel(env=env) as k:
        check(k, "xs = [1]")
        check(k, "xs.append(2)")
    with Kernel(env=env) as k:  # another process: it must still see its own history
        r = k.execute("%fm rewind 1")
        assert r.status == "ok" and "not made on this machine" not in r.text(), r.text()
        check(k, "assert xs == [1], xs")


def test_an_export_right_after_a_crash_carries_the_pending_flow_run(tmp_path: Path) -> None:
    history = tmp_path / "src" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "import fm_kernel as fm\n@fm.flow\ndef slow(n):\n"
                 "    for i in range(n):\n        fm.sleep(0.2)\n    return n")
        # killed by its own hand right after the start: before any checkpoint
        k.kc.execute("run = slow.start(200)\nimport os; os.kill(os.getpid(), 9)")
        k.km.provisioner.process.wait()  # type: ignore[union-attr]
        k.kc.stop_channels()
        k.km.cleanup_resources()
    log = Path(str(history) + ".flowlog")
    assert log.exists() and log.stat().st_size > 0, "the run's records must be in the flowlog"
    assert query(history, "SELECT count(*) FROM runs") == [(0,)], "not checkpointed yet"
    bundle = tmp_path / "b.fmb"
    r = fm_cli("export", str(history), "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "dst" / "h.duckdb"
    r = fm_cli("import", str(bundle), "--history", str(dst), "--trust")
    assert r.returncode == 0, r.stderr
    r = fm_cli("runs", "--history", str(dst))
    assert r.returncode == 0 and "slow" in r.stdout, (r.stdout, r.stderr)
    r = fm_cli("runs", "--history", str(history))
    assert r.returncode == 0 and "slow" in r.stdout, (r.stdout, r.stderr)
