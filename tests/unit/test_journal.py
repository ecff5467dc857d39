"""The flow journal over a real history: records are durable in the log at
once and reach DuckDB at a checkpoint, and a history reopened after a crash
(the process gone without close) holds every acknowledged record exactly
once. A crash is simulated by dropping the store and journal without
closing them and opening the same file again, as the next kernel would."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fm_kernel.errors import NotStorable
from fm_kernel.flows.journal import LOG_SUFFIX, Journal
from fm_kernel.record.store import Store

NEVER = 3600.0  # checkpoint interval: only explicit checkpoints happen


def run_row(run_id: str, status: str, t: float = 1_700_000_000.0, **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "flow": "etl", "status": status, "args": '{"n": 3}', "result": None,
            "error": None, "started_at": t, "finished_at": None, "forked_from_run": None,
            "forked_from_step": None, **extra}


def step_row(run_id: str, position: int, result: Any, attempt: int = 1) -> dict[str, Any]:
    return {"run_id": run_id, "position": position, "name": f"step{position}", "status": "ok",
            "attempt": attempt, "started_at": 1_700_000_001.0, "finished_at": 1_700_000_002.0,
            "duration_ms": 1000.0, "result": result, "error": None, "detail": None}


def crash(store: Store) -> None:
    """What a kill -9 leaves: the log file as written, DuckDB as last committed.
    The journal is abandoned without close() (its checkpointer never wakes);
    only the store's connection goes, so this process can open the file again."""
    store.close()


@pytest.fixture
def opened(history_file: Path):
    made: list[tuple[Store, Journal]] = []

    def open_() -> tuple[Store, Journal]:
        store = Store.open(history_file)
        journal = Journal(store, checkpoint_interval=NEVER)
        made.append((store, journal))
        return store, journal

    yield open_
    store, journal = made[-1]
    journal.close()
    store.close()


def test_records_reach_the_views_at_a_checkpoint(opened) -> None:
    store, journal = opened()
    journal.append("run", run_row("r1", "running"))
    journal.append("step", step_row("r1", 0, '{"rows": 10}'))
    journal.event("flow_started", "r1", {"flow": "etl"})
    assert journal.log_path.stat().st_size > 0
    journal.checkpoint()
    assert journal.log_path.stat().st_size == 0  # all of it is in DuckDB now
    row = journal.run_row("r1")
    assert row is not None and (row["flow"], row["status"]) == ("etl", "running")
    assert row["started_at"] == pytest.approx(1_700_000_000.0)
    steps = journal.step_rows("r1")
    assert [(s["position"], s["name"], s["result"]) for s in steps] == [(0, "step0", '{"rows": 10}')]
    res = store.query("SELECT kind, run_id, payload->>'flow' FROM events WHERE run_id = 'r1'")
    assert res.rows == [("flow_started", "r1", "etl")]


def test_the_latest_run_record_is_the_status(opened) -> None:
    _store, journal = opened()
    journal.append("run", run_row("r1", "running"))
    journal.append("run", run_row("r2", "sleeping", t=1_700_000_100.0))
    journal.append("run", run_row("r1", "succeeded", result='"done"', finished_at=1_700_000_050.0))
    assert [r["run_id"] for r in journal.pending_runs()] == ["r2"]
    assert journal.run_row("r1")["status"] == "succeeded"
    assert journal.run_row("nope") is None


def test_a_crash_before_any_checkpoint_loses_nothing(opened, history_file: Path) -> None:
    store, journal = opened()
    journal.append("run", run_row("r1", "running"))
    for p in range(5):
        journal.append("step", step_row("r1", p, str(p)))
    crash(store)
    assert Path(str(history_file) + LOG_SUFFIX).stat().st_size > 0

    store, journal = opened()
    assert [s["position"] for s in journal.step_rows("r1")] == [0, 1, 2, 3, 4]
    assert [r["run_id"] for r in journal.pending_runs()] == ["r1"]  # the next kernel resumes it
    assert journal.log_path.stat().st_size == 0


def test_records_checkpointed_before_a_crash_are_not_inserted_twice(opened, history_file: Path) -> None:
    store, journal = opened()
    journal.append("run", run_row("r1", "running"))
    journal.append("step", step_row("r1", 0, '"a"'))
    log = Path(str(history_file) + LOG_SUFFIX)
    written = log.read_bytes()
    journal.checkpoint()
    journal.append("step", step_row("r1", 1, '"b"'))
    written += log.read_bytes()
    crash(store)
    # the crash came between the checkpoint's commit and its truncation of the log
    log.write_bytes(written)

    store, journal = opened()
    assert [(s["position"], s["result"]) for s in journal.step_rows("r1")] == [(0, '"a"'), (1, '"b"')]
    assert store.query("SELECT count(*) FROM fm_run_records").rows == [(1,)]


def test_a_line_torn_by_the_crash_is_skipped(opened, history_file: Path) -> None:
    store, journal = opened()
    journal.append("step", step_row("r1", 0, '"kept"'))
    crash(store)
    with open(str(history_file) + LOG_SUFFIX, "ab") as f:
        f.write(b'{"lsn": 2, "k": "step", "r": {"run_id": "r1", "posi')  # its write never returned

    store, journal = opened()
    assert [s["result"] for s in journal.step_rows("r1")] == ['"kept"']
    journal.append("step", step_row("r1", 1, '"after"'))  # numbering goes on past the torn line
    assert [s["result"] for s in journal.step_rows("r1")] == ['"kept"', '"after"']


def test_recovery_happens_once(opened) -> None:
    store, journal = opened()
    journal.append("step", step_row("r1", 0, "1"))
    crash(store)
    store, journal = opened()
    crash(store)
    store, journal = opened()
    assert len(journal.step_rows("r1")) == 1


def test_the_checkpointer_thread_moves_records_on_its_own(history_file: Path) -> None:
    store = Store.open(history_file)
    journal = Journal(store, checkpoint_interval=0.05)
    try:
        journal.append("step", step_row("r1", 0, "1"))
        deadline = time.monotonic() + 10
        while store.query("SELECT count(*) FROM fm_run_step_records").rows != [(1,)]:
            assert time.monotonic() < deadline, "the checkpointer never ran"
            time.sleep(0.02)
        assert any(t.name == "fm-flow-journal" for t in threading.enumerate())
    finally:
        journal.close()
        store.close()


def test_a_copy_of_the_history_holds_records_not_yet_checkpointed(opened, tmp_path: Path) -> None:
    store, journal = opened()
    journal.append("step", step_row("r1", 0, '"in the copy"'))
    target = tmp_path / "copy.duckdb"
    store.copy_to(target)
    copy = Store.open(target)
    try:
        assert copy.query("SELECT result::VARCHAR FROM run_steps").rows == [('"in the copy"',)]
    finally:
        copy.close()


def test_plain_values_are_stored_as_json_and_come_back_equal(opened) -> None:
    _store, journal = opened()
    for value in (None, 1, 2.5, "text", True, [1, [2, "x"]], {"a": {"b": [None]}}):
        text = journal.encode(value, "step0")
        assert journal.decode(text) == value
    assert journal.decode(None) is None


def test_a_value_neither_json_nor_picklable_is_refused_with_the_step_named(opened) -> None:
    _store, journal = opened()
    with pytest.raises(NotStorable, match=r"step 'load' .*_thread\.lock.*neither JSON nor picklable"):
        journal.encode(threading.Lock(), "step 'load'")


def test_appending_after_close_is_refused(opened) -> None:
    _store, journal = opened()
    journal.close()
    with pytest.raises(Exception, match="closed"):
        journal.append("step", step_row("r1", 0, "1"))


def test_every_status_change_of_a_run_is_kept_whatever_the_batch(opened) -> None:
    """fm_run_records is append-only history: a run's status changes are
    rows, all of them, however many a checkpoint batch holds (which ones
    share a batch depends on timing: dropping all but the last of a batch
    made the history depend on it)."""
    store, journal = opened()
    for status in ("running", "waiting", "running"):
        journal.append("run", run_row("r1", status))
    journal.append("run", run_row("r2", "running"))
    journal.append("run", run_row("r1", "waiting"))
    journal.checkpoint()
    assert store.query("SELECT run_id, status FROM fm_run_records ORDER BY seq").rows == [
        ("r1", "running"), ("r1", "waiting"), ("r1", "running"), ("r2", "running"), ("r1", "waiting")]
    assert dict(store.query("SELECT run_id, status FROM runs").rows) == {"r1": "waiting",
                                                                        "r2": "running"}


def test_collected_records_wait_for_the_callers_one_write(opened) -> None:
    store, journal = opened()
    size = journal.log_path.stat().st_size
    with journal.collecting() as held:
        journal.append("run", run_row("r1", "waiting"))
        journal.append("step", step_row("r1", 0, '"a"'))
        assert journal.log_path.stat().st_size == size  # nothing written yet
        with pytest.raises(RuntimeError, match="does not nest"):
            with journal.collecting():
                pass
    assert [k for k, _ in held] == ["run", "step"]
    journal.append_many(held)
    assert len(journal.log_path.read_bytes().splitlines()) == 2
    with pytest.raises(ZeroDivisionError):
        with journal.collecting():
            1 / 0
    journal.append("run", run_row("r1", "running"))  # written again as usual
    assert len(journal.log_path.read_bytes().splitlines()) == 3
    journal.checkpoint()
    assert store.query("SELECT status FROM runs").rows == [("running",)]
