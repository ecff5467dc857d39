from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kernel_driver import Kernel  # noqa: E402


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return tmp_path / "hist" / "history.duckdb"


@pytest.fixture
def kernel(history: Path):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        yield k
