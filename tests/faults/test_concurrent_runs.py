"""50 concurrent flow runs, each with a durable sleep and a callback posted
over real HTTP, complete with whole journals (the soak bench's load part,
bench/soak.py, run here in CI)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from kernel_driver import Kernel  # noqa: E402
from soak import fifty_runs  # noqa: E402


def test_fifty_concurrent_runs_with_timers_and_callbacks(tmp_path: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(tmp_path / "h.duckdb")}) as k:
        outcome = fifty_runs(k)
    assert outcome.startswith("PASS"), outcome
