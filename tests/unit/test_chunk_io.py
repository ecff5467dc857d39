"""Chunk files written and read on the pool (record/chunkio.py, objects.py),
and the in-memory reads a HEAD move no longer asks DuckDB for (branch heads,
recent steps' states): each must say exactly what a fresh read would."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fm_kernel.record import trust
from fm_kernel.record.objects import CorruptObject, ObjectFiles
from fm_kernel.record.store import Store
from fm_kernel.state.snapshot import Snapshotter
from fm_kernel.state.states import States

MB = 1024 * 1024


@pytest.fixture(params=["buffered", "direct"])
def objects(request: Any, tmp_path: Path) -> ObjectFiles:
    objs = ObjectFiles(tmp_path / "h.objects", defer=True)
    objs.io.direct = request.param == "direct"
    return objs


def capture(snap: Snapshotter, ns: dict, code: str, prev: Any = None) -> Any:
    cap = snap.capture(ns, code, prev)
    snap.objects.sync()
    return cap


def test_a_large_array_round_trips_and_writes_only_what_changed(objects: ObjectFiles) -> None:
    snap = Snapshotter(objects)
    ns: dict = {"__name__": "__main__", "a": np.random.default_rng(0).random(5 * MB)}  # 40 MiB
    first = capture(snap, ns, "a = ...")
    assert first.bytes_written >= 40 * MB
    ns["a"][123] = -1.0
    edit = capture(snap, ns, "a[123] = -1.0", first.manifest)
    assert edit.bytes_written < 3 * MB  # one 2 MiB chunk and a header
    r = snap.restore(first.manifest, ns, edit.manifest)
    assert r.restored == ["a"] and ns["a"][123] != -1.0
    assert np.array_equal(ns["a"], np.random.default_rng(0).random(5 * MB))
    ns["a"][0] = 7.0  # the restored array is writable, on memory of its own
    assert ns["a"][0] == 7.0


@pytest.mark.parametrize("damage", ["flipped", "short", "missing"])
def test_a_rewind_over_a_damaged_chunk_names_it_and_keeps_the_live_value(
        objects: ObjectFiles, damage: str) -> None:
    snap = Snapshotter(objects)
    ns: dict = {"__name__": "__main__", "a": np.arange(3 * MB, dtype=np.float64)}  # 12 chunks
    first = capture(snap, ns, "a = ...")
    ns["a"] = ns["a"] * 2
    now = capture(snap, ns, "a = a * 2", first.manifest)
    live = ns["a"]
    header = json.loads(objects.get(first.manifest["a"].ref))
    key = header["buffers"][0][7][0]  # one in the middle: reads of later chunks are under way
    path = objects.path(key)
    data = bytearray(path.read_bytes())
    if damage == "flipped":
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "short":
        path.write_bytes(bytes(data[:-4096]))
    else:
        path.unlink()
    r = snap.restore(first.manifest, ns, now.manifest)
    assert key in r.not_restored["a"], r.not_restored
    assert ns["a"] is live and r.kept == ["a"]
    with pytest.raises(CorruptObject, match=key):
        snap.load_value(first.manifest["a"])


def test_a_failed_chunk_write_fails_the_capture_and_leaves_nothing_pending(
        objects: ObjectFiles, monkeypatch: Any) -> None:
    snap = Snapshotter(objects)
    ns: dict = {"__name__": "__main__", "a": np.random.default_rng(1).random(2 * MB)}  # 8 chunks
    calls = []
    real = objects.io.write_fd

    def full_disk(fd: int, data: memoryview, writeback: bool = False) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, writeback)

    monkeypatch.setattr(objects.io, "write_fd", full_disk)
    with pytest.raises(OSError, match="No space"):
        capture(snap, ns, "a = ...")
    objects.abandon()  # what States.capture does after a failed capture
    assert not objects._pending
    assert not list(objects.root.rglob(".tmp-*"))  # the failed write's temp file is gone
    monkeypatch.setattr(objects.io, "write_fd", real)
    again = capture(snap, ns, "a = ...")  # space is back: no old error resurfaces
    assert np.array_equal(snap.load_value(again.manifest["a"]), ns["a"])


def test_an_inspection_writes_nothing(objects: ObjectFiles) -> None:
    snap = Snapshotter(objects)
    ns: dict = {"__name__": "__main__"}
    assert snap.content_fp(np.ones(MB), ns)
    assert not objects._pending and not objects.root.exists()


def test_branch_heads_kept_in_memory_match_the_view(store: Store, make_step) -> None:
    def fresh() -> dict:
        return dict(store.query("SELECT name, head FROM branches").rows)

    assert store.branch_heads() == fresh()
    store.append_step(make_step(store.next_step()))
    store.append_branch("side", 1, 1)  # new: read again
    store.append_step(make_step(store.next_step(), branch="side", parent=1))
    store.append_branch("main", 1, None)  # a rewind on main
    store.append_branch("side", None, None)  # no head: the view keeps the last one
    store.append_step(make_step(store.next_step(), branch="nowhere"))  # no branch record: not shown
    assert store.branch_heads() == fresh()
    with store.transaction():  # another writer of branches (an import): read again after it
        store.execute("INSERT INTO fm_branch_records VALUES (?, 'imp', 2, 2, now())",
                      [store.next_seq()])
    assert store.branch_heads() == fresh() and "imp" in fresh()
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.append_branch("gone", 1, 1)
            raise RuntimeError("rolled back")
    assert store.branch_heads() == fresh() and "gone" not in fresh()


def test_recent_states_kept_in_memory_equal_the_record(store: Store, make_step) -> None:
    ns: dict = {"__name__": "__main__", "d": {"k": 1}, "xs": [1, 2]}
    trust.stamp_origin(store)  # made here, as the kernel stamps a history it creates
    states = States(store, ns)
    steps = []
    for code in ("d = {'k': 1}", "d['k'] = 2", "xs.append(3)"):
        if code != "d = {'k': 1}":
            exec(code, ns)
        state, entries, cap = states.capture(code)
        rec = make_step(store.next_step(), code=code, state=state)
        store.append_step(rec, entries)
        states.committed(entries, cap, rec.step)
        steps.append(rec.step)
    for step in steps:
        kept = states.manifest(step)
        states._manifests.clear()
        read = states.manifest(step)
        assert {n: e.to_json() for n, e in kept.items()} == {n: e.to_json() for n, e in read.items()}
    states.restore(steps[0])
    assert ns["d"] == {"k": 1} and ns["xs"] == [1, 2]
    held = ns["d"]
    states.restore(steps[1])  # the step-1 dict is set aside, kept in memory for a way back
    assert ns["d"] == {"k": 2} and ns["d"] is not held
    held["k"] = 99  # mutated behind the history's back while set aside
    states.restore(steps[0])
    assert ns["d"] == {"k": 1} and ns["d"] is not held  # loaded again, never the stale object


def test_a_full_disk_during_a_direct_write_fails_that_write_only(tmp_path: Path,
                                                                 monkeypatch: Any) -> None:
    from fm_kernel.record import chunkio

    objs = ObjectFiles(tmp_path / "h.objects", defer=True)
    objs.io.direct = True
    calls = []
    real = chunkio._write_all

    def full(fd: int, data: memoryview) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(chunkio, "_write_all", full)
    data = memoryview(bytes(range(256)) * 4096)  # 1 MiB: one loose object
    with pytest.raises(OSError, match="No space"):
        objs.put(data)
    assert objs.io.direct  # still direct once space is back
    key = objs.put(data)
    assert objs.get(key) == bytes(data)
