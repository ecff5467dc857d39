"""How fm.map over Dask groups items into chunks (fm_kernel/flows/dask_map.py),
in-process: the size rule, and the body a chunk runs on a worker (called
here directly, after a trip through cloudpickle as Dask sends it)."""

from __future__ import annotations

import threading

import cloudpickle

from fm_kernel.flows import dask_map
from fm_kernel.flows.context import CURRENT_STEP
from fm_kernel.flows.dask_map import CHUNK_SECONDS, chunk_body, chunk_size


def test_first_wave_goes_one_item_per_task() -> None:
    assert chunk_size(None, 1000, 8) == 1       # nothing measured yet


def test_a_chunk_holds_about_chunk_seconds_of_body_time() -> None:
    assert chunk_size(CHUNK_SECONDS / 10, 10_000, 8) == 10
    assert chunk_size(CHUNK_SECONDS * 3, 10_000, 8) == 1    # long bodies go alone
    assert chunk_size(0.0, 10_000, 8) == 10_000 // 16        # instant bodies: the balance rule


def test_the_end_of_a_map_keeps_two_tasks_per_slot() -> None:
    assert chunk_size(CHUNK_SECONDS / 100, 160, 8) == 10     # 160 items, 8 slots: 16 tasks
    assert chunk_size(CHUNK_SECONDS / 100, 3, 8) == 1


def test_chunk_seconds_zero_sends_every_item_alone(monkeypatch) -> None:
    monkeypatch.setattr(dask_map, "CHUNK_SECONDS", 0)
    assert chunk_size(1e-6, 10_000, 8) == 1


class Unpicklable(Exception):
    def __init__(self, msg: str):
        super().__init__(msg)
        self.lock = threading.Lock()


def test_each_item_runs_in_its_own_step_context_and_fails_alone() -> None:
    def body(x: int) -> str:
        if x == 2:
            raise ValueError("two")
        if x == 3:
            raise Unpicklable("three")
        return CURRENT_STEP.get().key

    in_chunk = cloudpickle.loads(cloudpickle.dumps(chunk_body()))
    sctxs = [{"run_id": "r", "position": 10 + x, "name": "body", "attempt": 1} for x in range(5)]
    out = in_chunk(body, sctxs, list(range(5)))
    assert [(s, v if s == "ok" else type(v).__name__) for s, v, _ in out] == [
        ("ok", "r:10"), ("ok", "r:11"), ("error", "ValueError"), ("error", "RuntimeError"), ("ok", "r:14")]
    assert "Unpicklable: three" in str(out[3][1])   # sent as text: it would fail the whole chunk
    assert all(seconds >= 0 for _, _, seconds in out)
    assert CURRENT_STEP.get() is None                # nothing left set after the chunk
    cloudpickle.dumps(out)                           # the whole outcome travels back
