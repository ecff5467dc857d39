"""The task board over a real journal and history, without a kernel: claims
oldest first and in batches, leases that run out offered again from the
heap, the heap kept to the leases that are live however many tasks pass,
and a board rebuilt from the history's events agreeing with the live one."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from fm_kernel.errors import LeaseLost
from fm_kernel.flows.journal import Journal
from fm_kernel.flows.task_board import TaskBoard
from fm_kernel.flows.tasks import task_id_of
from fm_kernel.record.store import Store


@pytest.fixture
def journal(history_file: Path):
    store = Store.open(history_file)
    j = Journal(store, checkpoint_interval=3600.0)
    yield j
    j.close()
    store.close()


def queue(b: TaskBoard, n: int, name: str = "q", heartbeat: float | None = None, retries: int = 0) -> None:
    for i in range(n):
        b.enqueue(f"{name}-{i}", f"run-{i}", 1, name, {"i": i}, None, heartbeat, retries)


def test_claims_come_oldest_first_in_batches_each_once(journal: Journal) -> None:
    b = TaskBoard(journal)
    queue(b, 5)
    first = b.claim_many("q", "w", 3)
    assert [t["payload"]["i"] for t in first] == [0, 1, 2]
    assert [t["payload"]["i"] for t in b.claim_many("q", "w", 3)] == [3, 4]
    assert b.claim("q", "w") is None and b.claim("other", "w") is None
    got = b.complete_many([(first[0]["task_id"], first[0]["lease"], "a"),
                           (first[0]["task_id"], first[0]["lease"], "a"),
                           (first[1]["task_id"], "wrong", "b")])
    assert got[:2] == [True, False] and isinstance(got[2], LeaseLost)


def test_a_lease_that_ran_out_is_offered_again_from_the_heap(journal: Journal) -> None:
    b = TaskBoard(journal)
    queue(b, 1, heartbeat=0.05, retries=1)
    first = b.claim("q", "slow")
    assert first is not None and first["attempt"] == 1
    time.sleep(0.1)
    second = b.claim("q", "fast")
    assert second is not None and second["task_id"] == first["task_id"] and second["attempt"] == 2
    with pytest.raises(LeaseLost):
        b.complete(first["task_id"], first["lease"], "late")
    assert b.complete(second["task_id"], second["lease"], "fresh") is True


def test_the_lease_heap_holds_the_live_leases_not_every_claim_ever(journal: Journal) -> None:
    b = TaskBoard(journal)
    queue(b, 3000)
    most = 0
    while got := b.claim_many("q", "w", 10):
        assert b.complete_many([(t["task_id"], t["lease"], t["payload"]) for t in got]) == [True] * 10
        most = max(most, len(b.leases))
    assert not b.claimed and most <= 1024 + 4 * 10 + 1  # never 3,000: one per claim made
    journal.flush()
    again = TaskBoard(journal)  # a board rebuilt from the events agrees
    assert {t.status for t in again.tasks.values()} == {"completed"} and not again.queued
    assert again.tasks["q-7"].result == {"i": 7}


def test_a_tasks_id_is_the_uuid5_it_always_was() -> None:
    # histories written before hold these ids: a run resumed there must find its task
    for run_id, p in (("3f2a", 0), ("a" * 32, 17), ("r-é", 123456)):
        assert task_id_of(run_id, p) == uuid.uuid5(uuid.NAMESPACE_URL, f"fm-task:{run_id}:{p}").hex


def test_a_copy_from_get_is_the_task_and_apart_from_it(journal: Journal) -> None:
    b = TaskBoard(journal)
    b.enqueue("t1", "r1", 0, "q", {"x": 1}, None, None, 0)
    got = b.get("t1")
    assert (got.task_id, got.status, got.payload, got.retries) == ("t1", "queued", {"x": 1}, 0)
    got.status = "changed"
    assert b.get("t1").status == "queued"


def test_records_given_with_an_enqueue_go_in_its_write_even_for_a_task_known(
        journal: Journal) -> None:
    b = TaskBoard(journal)
    lines = lambda: len(journal.log_path.read_bytes().splitlines())  # noqa: E731
    b.enqueue("t1", "r1", 0, "q", None, None, None, 0,
              also=[("event", {"kind": "note", "run_id": "r1", "payload": {"n": 1}, "at": 1.0})])
    assert lines() == 2
    b.enqueue("t1", "r1", 0, "q", None, None, None, 0,  # queued before a kill: the same task
              also=[("event", {"kind": "note", "run_id": "r1", "payload": {"n": 2}, "at": 2.0})])
    assert lines() == 3 and len(b.tasks) == 1
