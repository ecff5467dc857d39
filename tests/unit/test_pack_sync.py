"""Small objects (the pack) are made durable where the mode's guarantee
needs them: in the default mode before the step log's batch that names them
commits into DuckDB (whose commit is synced), not on every cell's reply path;
with FM_FSYNC=1 before the cell's record is written, as the log line is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fm_kernel.record import packs, steplog, trust
from fm_kernel.record.store import Store
from fm_kernel.state.states import States


class _OsWith:
    def __init__(self, **calls):
        self.__dict__.update(calls)

    def __getattr__(self, name: str):
        return getattr(os, name)


@pytest.mark.parametrize("fsync", [False, True])
def test_the_pack_is_synced_before_the_batch_naming_it_commits(
        history_file: Path, monkeypatch: pytest.MonkeyPatch, make_step, fsync: bool) -> None:
    if fsync:
        monkeypatch.setenv("FM_FSYNC", "1")
    store = Store.open(history_file)
    store._log.interval = 3600  # type: ignore[union-attr]  # no batch but the one asked for
    steps_in_duckdb: list[int] = []  # at each fdatasync of the pack: the records DuckDB holds

    def tracked(fd: int) -> None:
        os.fdatasync(fd)
        steps_in_duckdb.append(store._conn.execute(
            "SELECT count(*) FROM fm_step_records").fetchone()[0])

    monkeypatch.setattr(packs, "os", _OsWith(fdatasync=tracked))
    try:
        trust.stamp_origin(store)
        ns: dict = {"__name__": "__main__", "xs": [1, 2, 3]}
        states = States(store, ns)
        state, entries, cap = states.capture("xs = [1, 2, 3]")
        # FM_FSYNC=1: durable before the record is; the default: not yet
        assert bool(steps_in_duckdb) == fsync
        rec = make_step(store.next_step(), code="xs = [1, 2, 3]", state=state)
        store.append_step(rec, entries)
        states.committed(entries, cap, rec.step)
        synced_at_capture = len(steps_in_duckdb)
        assert store.query("SELECT count(*) FROM steps").rows[0][0] == 1  # the batch ran
        if not fsync:  # synced by the batch, while DuckDB did not hold the record yet
            assert steps_in_duckdb[synced_at_capture:] and steps_in_duckdb[synced_at_capture] == 0
    finally:
        store.close()


def test_a_replay_after_a_crash_syncs_the_objects_before_it_commits(
        history_file: Path, monkeypatch: pytest.MonkeyPatch, make_step) -> None:
    """The dead process's last small objects may be in the page cache only
    (default mode); the records replayed from its step log name them."""
    store = Store.open(history_file)
    store._log.interval = 3600  # type: ignore[union-attr]
    trust.stamp_origin(store)
    ns: dict = {"__name__": "__main__", "xs": [1, 2, 3]}
    states = States(store, ns)
    state, entries, cap = states.capture("xs = [1, 2, 3]")
    store.append_step(make_step(store.next_step(), code="xs = [1, 2, 3]", state=state), entries)
    store.abandon()  # as kill -9 leaves it: the record in the step log only
    synced: list[Path] = []
    monkeypatch.setattr(steplog, "sync_folder", synced.append)
    reopened = Store.open(history_file)
    try:
        assert reopened._log.replayed  # type: ignore[union-attr]
        assert reopened.query("SELECT count(*) FROM steps").rows[0][0] == 1
        assert synced == [reopened.sidecar(".objects")]
    finally:
        reopened.close()
