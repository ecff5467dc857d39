"""Storage faults: a newer schema, corrupt and missing object files, a full
disk. Each gives one clear message, the kernel keeps executing cells, and
nothing already committed is lost or silently wrong."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, query, tmpfs  # noqa: E402


def chunk_files(history: Path) -> list[Path]:
    root = Path(str(history) + ".objects")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "frames")


def test_a_history_from_a_newer_version_is_left_alone(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.execute("kept = 1")
    con = duckdb.connect(str(history))
    con.execute("UPDATE fm_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    before = history.read_bytes()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r1 = k.execute("x = 1")
        r2 = k.execute("x + 1")
        assert r1.status == r2.status == "ok"
        notice = r1.text()
        assert "schema version 99" in notice and "upgrade flowmetal-kernel" in notice
        assert "records to" in notice and "schema" not in r2.text()
    assert history.read_bytes() == before  # not even opened for writing


def test_corrupt_and_missing_objects_are_named_and_the_rest_restores(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.execute("import numpy as np\nfine = [1, 2, 3]")
        k.execute("damaged = np.arange(3_000_000, dtype=np.float64)")
        k.execute("also_fine = 'text'")
        k.kill9()
    big = max(chunk_files(history), key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[100:108] = b"XXXXXXXX"
    big.write_bytes(bytes(data))
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("print(fine, also_fine, 'damaged' in dir())")
        assert r.status == "ok"
        assert "[1, 2, 3] text False" in r.text()
        assert "damaged" in r.text() and "not restored" in r.text()  # one line names it
        assert k.execute("y = 1").status == "ok"
    big.unlink()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("%fm checkout 3")  # the state that held `damaged`, now missing a chunk
        assert r.status == "ok" and "damaged (cannot load" in r.text() and "missing" in r.text(), r.text()
        assert k.execute("print(fine)").text().strip() == "[1, 2, 3]"
    assert query(history, "SELECT count(*) FROM steps WHERE status = 'ok'")[0][0] >= 5


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_reported_and_cells_keep_running(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "12m") as mnt:
        history = mnt / "h.duckdb"
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            assert k.execute("small = 41").status == "ok"
            r = k.execute("import numpy as np\nhuge = np.random.default_rng(0).random(4_000_000)")
            assert r.status == "ok"  # the cell itself succeeded
            assert "No space left" in r.text() or "not recorded" in r.text(), r.text()
            assert k.execute("del huge\nsmall += 1").status == "ok"
            assert k.execute("print(small)").text().strip() == "42"
        steps = query(history, "SELECT code, status FROM steps ORDER BY step")
        assert steps[0] == ("small = 41", "ok")  # committed before the disk filled: intact
        assert ("print(small)", "ok") in steps  # recording came back once space was free
