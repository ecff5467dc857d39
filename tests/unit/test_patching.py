"""Rewinding a large array by patching the live one (state/patching.py): only
the chunks that differ are read, and only when nothing but the namespace can
see the array; otherwise, or when anything fails, a restore is what it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fm_kernel.record.objects import digest

from cells import Cells

MB = 1024 * 1024
CHUNK = 2 * MB
N = 40 * MB // 8  # float64 elements: 20 chunks of 2 MiB


def arange() -> np.ndarray:
    return np.arange(N, dtype=np.float64)


@pytest.fixture
def cells(tmp_path: Path) -> Cells:
    c = Cells(tmp_path)
    c.ns["np"], c.ns["N"] = np, N
    c.run("big = np.arange(N, dtype=np.float64)")
    return c


def test_a_rewind_after_an_edit_patches_the_live_array_reading_one_chunk(cells: Cells) -> None:
    before = id(cells.ns["big"])
    cells.run("big[N // 2] = -1.0")
    r = cells.rewind(0)
    assert r.restored == ["big"] and r.patched == ["big"]
    assert id(cells.ns["big"]) == before  # the same array, its memory patched
    assert r.read_bytes <= CHUNK  # one chunk, not 40 MiB
    assert np.array_equal(cells.ns["big"], arange())
    # and forward again: the edit comes back the same way
    r = cells.rewind(1)
    assert r.patched == ["big"] and cells.ns["big"][N // 2] == -1.0 and r.read_bytes <= CHUNK


@pytest.mark.parametrize("hold, first", [
    ("held = [big]", "held[0][0]"),             # a reference outside the namespace
    ("held = big[:4]", "held[0]"),              # a view: its base is big
    ("held = memoryview(big)", "held[0]"),      # an export of its memory
    ("held = np.frombuffer(big, np.uint8)", "held[:8].view(np.float64)[0]"),
])
def test_an_array_someone_else_can_see_is_never_patched(cells: Cells, hold: str, first: str) -> None:
    outside: dict[str, Any] = {"big": cells.ns["big"], "np": np}
    exec(hold + "\ndel big", outside)  # `held` lives outside the namespace: no state knows it
    cells.run("big[0] = -1.0")
    r = cells.rewind(0)
    assert r.restored == ["big"] and r.patched == []
    assert np.array_equal(cells.ns["big"], arange())
    assert eval(first, outside) == -1.0  # what it holds still sees the edited memory


def test_a_loaded_array_is_patched_unless_a_view_of_its_memory_is_held(cells: Cells) -> None:
    cells.run("big[0] = -1.0")
    cells.run("del big")
    r = cells.rewind(1)  # no live array: a new one is loaded
    assert r.patched == [] and cells.ns["big"][0] == -1.0
    assert isinstance(cells.ns["big"].base, np.ndarray)  # on a buffer of the restore's own
    view = cells.ns["big"][:4]  # its base is that buffer's array, not big: a chain to check
    cells.run("big[1] = -2.0")
    r = cells.rewind(1)
    assert r.patched == [] and view[1] == -2.0 and cells.ns["big"][1] == 1.0
    del view
    loaded = id(cells.ns["big"])
    cells.run("big[2] = -3.0")
    r = cells.rewind(1)
    assert r.patched == ["big"] and id(cells.ns["big"]) == loaded
    expected = arange()
    expected[0] = -1.0
    assert np.array_equal(cells.ns["big"], expected)


def test_an_array_on_a_mapped_file_is_never_patched(cells: Cells, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(arange().tobytes())
    cells.ns["path"] = str(path)
    cells.run("import mmap\nwith open(path, 'r+b') as f:\n    big = np.frombuffer(mmap.mmap(f.fileno(), 0), np.float64)")
    cells.run("big[0] = -1.0")  # written through to the file
    r = cells.rewind(len(cells.states) - 2)
    assert r.restored == ["big"] and r.patched == [] and cells.ns["big"][0] == 0.0
    assert np.frombuffer(path.read_bytes(), np.float64)[0] == -1.0  # the file is the user's


def test_bytes_changed_since_the_last_capture_are_found_by_hashing(cells: Cells) -> None:
    cells.run("big[N // 2] = -1.0")
    cells.ns["big"][5] = 7.0  # no capture saw this: the live state is stale
    r = cells.rewind(0)
    assert r.patched == ["big"] and r.read_bytes == 2 * CHUNK
    assert np.array_equal(cells.ns["big"], arange())


def test_a_corrupt_chunk_leaves_the_live_array_untouched(cells: Cells) -> None:
    cells.run("big[0] = -1.0\nbig[N - 1] = -1.0")
    last = arange()[-(CHUNK // 8):]
    path = cells.objects.path(digest(memoryview(last).cast("B")))
    data = bytearray(path.read_bytes())
    data[100:108] = b"XXXXXXXX"
    path.write_bytes(bytes(data))
    r = cells.rewind(0)
    assert "big" in r.not_restored and "corrupt" in r.not_restored["big"] and r.patched == []
    big = cells.ns["big"]
    assert big[0] == -1.0 and big[N - 1] == -1.0  # not half patched: the first chunk read fine
    assert np.array_equal(big[1:-1], arange()[1:-1])


@pytest.mark.parametrize("change", [
    "big.shape = (2, N // 2)",      # the same memory, another shape: the stream differs
    "big = big * 2.0",              # a new array, every chunk different
    "big[:] = 0.0",                 # the same array, every chunk different
    "big.flags.writeable = False; big = big",
])
def test_what_a_patch_cannot_do_is_loaded(cells: Cells, change: str) -> None:
    cells.run(change)
    r = cells.rewind(0)
    assert r.restored == ["big"] and r.patched == [] and r.read_bytes >= N * 8
    assert cells.ns["big"].shape == (N,) and np.array_equal(cells.ns["big"], arange())


def test_the_rewind_event_says_what_was_read(cells: Cells) -> None:
    cells.run("big[3] = 0.5")
    r = cells.rewind(0)
    assert json.loads(json.dumps({"read_bytes": r.read_bytes, "patched": r.patched})) == \
        {"read_bytes": CHUNK, "patched": ["big"]}
