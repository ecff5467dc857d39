"""The step log over real files: a record is durable when append returns,
every read sees it, a dead process's records are replayed once, a torn or
refused write never costs a whole record, and what each durability mode
keeps through a simulated power loss (the log cut back to its last fsync)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest

from fm_kernel.record import steplog
from fm_kernel.record.rows import StepRecord
from fm_kernel.record.store import Store


def rec(step: int, code: str = "x = 1") -> StepRecord:
    now = dt.datetime.now(dt.timezone.utc)
    return StepRecord(step=step, branch="main", parent=step - 1 or None, kernel_id="k",
                      cell_id=None, execution_count=step, code=code, status="ok",
                      started_at=now, finished_at=now, duration_ms=1.0,
                      outputs=[{"position": 0, "output_type": "stream", "mime": "text/plain",
                                "content": "hi\n", "meta": {"name": "stdout"}}],
                      state={"names": ["x"], "ids": [f"e{step}"], "changed": ["x"]})


class OsWith:
    """The os module with some calls replaced, for steplog alone."""

    def __init__(self, **calls):
        self.__dict__.update(calls)

    def __getattr__(self, name: str):
        return getattr(os, name)


def raw_steps(path: Path) -> list[tuple]:
    """What DuckDB itself holds, without any replay."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT step, code FROM steps ORDER BY step").fetchall()
    finally:
        con.close()


@pytest.fixture
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No checkpoint by the thread during a test: what is in DuckDB got there by a read."""
    monkeypatch.setattr(steplog, "CHECKPOINT_INTERVAL", 3600.0)


def crash_copy(store: Store, dest: Path, log_bytes: int | None = None) -> Path:
    """The files of ``store`` as a crash leaves them (the process gone, its
    page cache kept), the step log cut to ``log_bytes`` when given."""
    dest.mkdir()
    for suffix in ("", ".wal", steplog.SUFFIX):
        src = Path(str(store.path) + suffix)
        if src.exists():
            shutil.copy(src, dest / (store.path.name + suffix))
    log = dest / (store.path.name + steplog.SUFFIX)
    if log_bytes is not None:
        os.truncate(log, log_bytes)
    return dest / store.path.name


def test_reads_see_every_acknowledged_record(history_file: Path, slow_batches: None) -> None:
    store = Store.open(history_file)
    store.append_step(rec(1))
    store.append_event("kernel_started", payload={"k": 1})
    assert store.step(1) is not None and store.step(1).code == "x = 1"
    assert json.loads(store.last_event(["kernel_started"])["payload"]) == {"k": 1}
    store.close()
    assert raw_steps(history_file) == [(1, "x = 1")]
    assert not Path(str(history_file) + steplog.SUFFIX).exists()  # all in DuckDB: removed


def test_a_dead_process_s_records_are_replayed_once(history_file: Path, tmp_path: Path,
                                                     slow_batches: None) -> None:
    store = Store.open(history_file)
    store.append_step(rec(1))
    assert store.steps().rows  # a read: step 1 is in DuckDB's WAL (and still in the log)
    store.append_step(rec(2, "y = 2"))
    store.append_branch("try", 2, 2)
    store.set_meta("origin", "here")
    copy = crash_copy(store, tmp_path / "crash")
    store.abandon()
    assert raw_steps(copy) == [(1, "x = 1")]  # DuckDB alone lacks step 2
    reopened = Store.open(copy)
    assert [r[0] for r in reopened.query("SELECT step FROM steps ORDER BY step").rows] == [1, 2]
    assert reopened.query("SELECT count(*) FROM fm_step_records").rows == [(2,)]  # once each
    assert ("try", 2) in [(r[0], r[1]) for r in reopened.branches().rows]
    assert reopened.meta("origin") == "here"
    assert reopened.last_step == 2 and reopened.next_step() == 3
    reopened.close()


def test_a_read_only_reader_replays_first(history_file: Path, tmp_path: Path,
                                          slow_batches: None) -> None:
    store = Store.open(history_file)
    store.append_step(rec(1))
    copy = crash_copy(store, tmp_path / "crash")
    store.abandon()
    reader = Store.open(copy, read_only=True)  # as `fm log` / `fm sql` open it
    assert [r[0] for r in reader.query("SELECT step FROM steps").rows] == [1]
    reader.close()


def test_a_torn_last_line_was_never_acknowledged(history_file: Path, tmp_path: Path,
                                                 slow_batches: None) -> None:
    store = Store.open(history_file)
    store.append_step(rec(1))
    whole = Path(str(history_file) + steplog.SUFFIX).stat().st_size
    store.append_step(rec(2, "y = 2"))
    copy = crash_copy(store, tmp_path / "crash", log_bytes=whole + 40)  # step 2 half written
    store.abandon()
    reopened = Store.open(copy)
    assert [r[0] for r in reopened.query("SELECT step FROM steps").rows] == [1]
    reopened.close()


def test_a_refused_write_is_cut_off_and_the_next_record_is_whole(
        history_file: Path, monkeypatch: pytest.MonkeyPatch, slow_batches: None) -> None:
    store = Store.open(history_file)
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd: int, data) -> int:  # as a disk that fills mid-record does
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(steplog, "os", OsWith(write=half_then_full))
    with pytest.raises(OSError, match="No space"):
        store.append_step(rec(1, "lost"))
    monkeypatch.setattr(steplog, "os", os)
    store.release_step(1)
    store.append_step(rec(1, "kept"))
    lines = steplog.read_lines(Path(str(history_file) + steplog.SUFFIX))
    assert [d["rec"]["code"] for d in lines] == ["kept"]
    assert [r[1] for r in store.query("SELECT step, code FROM steps").rows] == ["kept"]
    store.close()


@pytest.mark.parametrize("fsync", [False, True])
def test_power_loss_keeps_what_each_mode_promises(history_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  slow_batches: None, fsync: bool) -> None:
    """A power loss keeps only what was fsynced: DuckDB syncs its commits,
    and the step log is cut back to the offset of its last fdatasync."""
    if fsync:
        monkeypatch.setenv("FM_FSYNC", "1")
    synced = {"bytes": 0}
    real = os.fdatasync

    def tracked(fd: int) -> None:
        real(fd)
        synced["bytes"] = os.fstat(fd).st_size

    monkeypatch.setattr(steplog, "os", OsWith(fdatasync=tracked))
    store = Store.open(history_file)
    for i in range(1, 6):
        store.append_step(rec(i, f"v{i} = {i}"))
    copy = crash_copy(store, tmp_path / "power", log_bytes=synced["bytes"])
    store.abandon()
    reopened = Store.open(copy)
    kept = [r[0] for r in reopened.query("SELECT step FROM steps ORDER BY step").rows]
    reopened.close()
    # FM_FSYNC=1: every acknowledged record; the default: none since the last
    # batch (here no batch ran; the default's window is one checkpoint interval)
    assert kept == ([1, 2, 3, 4, 5] if fsync else [])


def test_states_are_logged_as_changes_and_replayed_whole(history_file: Path, tmp_path: Path,
                                                        slow_batches: None) -> None:
    """A state names every variable: with 2,000 names the log line of a cell
    that changed one holds that one (and the names added), not all of them."""
    store = Store.open(history_file)
    names = [f"v{i}" for i in range(2000)]
    states = [(names, [f"e{i}" for i in range(2000)])]
    states.append((names, [*states[0][1][:5], "x5", *states[0][1][6:]]))  # v5 changed
    states.append((names + ["w"], [*states[1][1], "ew"]))                 # w added
    states.append((names[1:] + ["w"], [*states[1][1][1:], "ew"]))         # v0 deleted: whole
    for step, (n, i) in enumerate(states, 1):
        r = rec(step)
        r.state = {"names": list(n), "ids": list(i), "changed": []}
        store.append_step(r)
    log = Path(str(history_file) + steplog.SUFFIX)
    sizes = [len(line) for line in log.read_bytes().split(b"\n")[:-1]]
    assert sizes[1] < 1000 and sizes[2] < 1000 and sizes[0] > 20000 and sizes[3] > 20000, sizes
    copy = crash_copy(store, tmp_path / "crash")
    store.abandon()
    reopened = Store.open(copy)
    for step, (n, i) in enumerate(states, 1):
        assert reopened.step(step).state["names"] == n and reopened.step(step).state["ids"] == i
    reopened.close()


def test_a_change_whose_base_line_is_damaged_is_left_out_never_guessed(
        history_file: Path, tmp_path: Path, slow_batches: None) -> None:
    store = Store.open(history_file)
    for step in (1, 2, 3):
        r = rec(step)
        r.state = {"names": ["a", "b"], "ids": ["1", str(step)], "changed": ["b"]}
        store.append_step(r)
    copy = crash_copy(store, tmp_path / "crash")
    store.abandon()
    log = Path(str(copy) + steplog.SUFFIX)
    lines = log.read_bytes().split(b"\n")
    lines[1] = b"{damaged" + lines[1][8:]
    log.write_bytes(b"\n".join(lines))
    reopened = Store.open(copy)
    assert [r[0] for r in reopened.query("SELECT step FROM steps ORDER BY step").rows] == [1]
    reopened.close()


def test_appends_from_many_threads_while_batches_go_in_land_once(history_file: Path) -> None:
    """Appends take the log's lock only, batches the connection's: records
    appended while a batch is written wait for the next one, none is lost
    or written twice, and no step number is handed out twice."""
    import threading

    store = Store.open(history_file)
    steps: list[int] = []

    def writer(n: int) -> None:
        for i in range(150):
            step = store.next_step()
            steps.append(step)
            store.append_step(rec(step, f"t{n} = {i}"))
            store.append_event("ping", payload={"n": n, "i": i})

    def reader() -> None:
        for _ in range(40):
            store.query("SELECT count(*) FROM steps")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(steps)) == 600
    assert store.query("SELECT count(*), count(DISTINCT seq) FROM fm_step_records").rows == [(600, 600)]
    assert store.query("SELECT count(*) FROM fm_events WHERE kind = 'ping'").rows == [(600,)]
    store.close()
    assert raw_steps(history_file)[-1][0] == 600


def test_a_transaction_never_takes_in_records_another_thread_appended_during_it(
        history_file: Path, slow_batches: None) -> None:
    """Why a flush inside a transaction is skipped: the records other threads
    appended meanwhile are already acknowledged, and a batch joined to the
    open transaction would leave the log's queue and then roll back with it."""
    import threading

    store = Store.open(history_file)
    store.append_step(rec(1))
    with pytest.raises(RuntimeError, match="rolled back"):
        with store.transaction():  # the log's waiting record 1 goes in first, committed
            other = threading.Thread(target=store.append_step, args=(rec(2, "y = 2"),))
            other.start()
            other.join()  # step 2 is acknowledged: it went to the log, not into this transaction
            store.query("SELECT count(*) FROM steps")  # a read inside: flushes nothing
            raise RuntimeError("rolled back")
    assert [r[0] for r in store.query("SELECT step FROM steps ORDER BY step").rows] == [1, 2]
    store.close()
    assert raw_steps(history_file) == [(1, "x = 1"), (2, "y = 2")]


def test_a_reader_holding_the_connection_flushes_the_step_log_but_no_other_writer(
        store: Store, slow_batches: None) -> None:
    """Other writers' flushes (the flow log's) wait for the connection from
    their own lock: run by a thread that holds the connection they would
    deadlock, so only the step log (which takes the connection first) goes in."""
    flushed: list[str] = []
    store.before_copy.append(lambda: flushed.append("flow log"))
    store.append_step(rec(1))
    with store.exclusive() as in_transaction:
        assert not in_transaction
        assert store.query("SELECT count(*) FROM fm_step_records").rows == [(1,)]
    assert flushed == []
    with store.transaction():
        with store.exclusive() as in_transaction:
            assert in_transaction
        store.query("SELECT 1")
    assert flushed == []
    store.query("SELECT 1")  # nothing held: every writer
    assert flushed == ["flow log"]
