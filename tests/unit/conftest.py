"""The in-process tier: real DuckDB files under tmp_path, no kernel, no
subprocess. Every test here is marked `unit` by tests/conftest.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from fm_kernel.record.store import StepRecord, Store


@pytest.fixture
def history_file(tmp_path: Path) -> Path:
    return tmp_path / "hist" / "history.duckdb"


@pytest.fixture
def store(history_file: Path) -> Iterator[Store]:
    s = Store.open(history_file)
    try:
        yield s
    finally:
        s.close()


T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def step_record(step: int, code: str = "x = 1", status: str = "ok", *, parent: int | None = None,
                branch: str = "main", state: dict[str, Any] | None = None,
                outputs: list[dict[str, Any]] | None = None, **extra: Any) -> StepRecord:
    """A cell's record as the kernel writes it (finished unless status='running')."""
    done = status != "running"
    return StepRecord(
        step=step, branch=branch, parent=parent, kernel_id="k-test", cell_id=f"cell-{step}",
        execution_count=step, code=code, status=status, started_at=T0 + dt.timedelta(seconds=step),
        finished_at=T0 + dt.timedelta(seconds=step, milliseconds=250) if done else None,
        duration_ms=250.0 if done else None, outputs=outputs or [], state=state, **extra)


@pytest.fixture(scope="session")
def make_step() -> Callable[..., StepRecord]:
    return step_record
