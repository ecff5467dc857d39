"""Many small objects cheaply (record/packs.py): packed, not a file each;
restored exactly; a torn pack tail ignored and named; histories of loose
chunk files still read; bundles carry packs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_driver import Kernel, check  # noqa: E402

from fm_kernel.record.packs import IDX, MAGIC, REC, scan  # noqa: E402

FM = str(Path(sys.executable).with_name("fm"))
ARRAYS = "import numpy as np\nL = [np.arange(2.0) + i for i in range(5000)]"
CHECK = "print(len(L), L[4999][1], L[0].flags.writeable, sum(float(a.sum()) for a in L))"
EXPECT = "5000 5000.0 True 25000000.0"


def objects(history: Path) -> Path:
    return Path(str(history) + ".objects")


def files(history: Path) -> list[Path]:
    return [p for p in objects(history).rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_five_thousand_small_arrays_are_a_few_files_and_restore_exactly(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, ARRAYS)
        check(k, "L[7][0] = -1.0")
        assert len(files(history)) <= 8, sorted(p.name for p in files(history))
        on_disk = sum(p.stat().st_size for p in files(history))
        pickled = int(check(k, "import pickle\nprint(len(pickle.dumps(L)))"))
        assert on_disk <= 2 * 2 * pickled, (on_disk, pickled)  # two states of L
        assert "1 restored" in check(k, "%fm rewind 1")
        assert check(k, CHECK + "\nprint(L[7][0])").split() == EXPECT.split() + ["7.0"]
    with Kernel(env={"FM_HISTORY": str(history)}) as k:  # a fresh process reads the packs
        check(k, "%fm checkout 2")
        assert check(k, "print(L[7][0], len(L))").split() == ["-1.0", "5000"]


def _last_pack(history: Path) -> Path:
    return max((objects(history) / "packs").glob("*.pack"), key=lambda p: p.stat().st_mtime)


def test_a_torn_pack_tail_is_ignored_and_reported(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "names = {'k%d' % i: i for i in range(300)}")
    pack = _last_pack(history)
    size = pack.stat().st_size
    key = bytes(16)
    with open(pack, "ab") as f:  # a record cut off after 10 of its 1000 bytes
        f.write(REC.pack(MAGIC, key, 1000) + b"0123456789")
    with open(pack.with_suffix(".idx"), "ab") as f:  # an index entry past the end
        f.write(IDX.pack(key, size + REC.size, 1000))
    assert [ok for *_, ok in scan(pack)][-1] is False
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "%fm checkout 1")
        assert check(k, "print(names['k299'], len(names))").split() == ["299", "300"]
    with open(pack, "rb") as f:
        assert f.read()[size:] == REC.pack(MAGIC, key, 1000) + b"0123456789"  # never touched by reads
    (objects(history) / ".unsettled").touch()
    os.utime(pack, (1, 1))
    r = subprocess.run([FM, "gc", "--history", str(history)], capture_output=True, text=True)
    assert r.returncode == 0 and "torn pack tail" in r.stdout and pack.name in r.stdout, r.stdout
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "%fm checkout 1")
        assert check(k, "print(names['k0'], len(names))").split() == ["0", "300"]


def test_a_damaged_pack_record_is_named_never_read_as_data(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "word = 'the value stored in a pack'")
        check(k, "word = 'changed'")
    pack = _last_pack(history)
    data = bytearray(pack.read_bytes())
    i = data.find(b"the value stored in a pack")
    assert i > 0
    data[i] ^= 0x20
    pack.write_bytes(bytes(data))
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "word = 'live'")
        out = check(k, "%fm checkout 1")
        assert "not restored" in out and "word" in out and "corrupt" in out, out
        assert check(k, "print(word)").strip() == "live"  # the live value kept, not bad bytes


def test_a_history_of_loose_chunk_files_still_reads(tmp_path: Path) -> None:
    """Before packs every object was a file <k[:2]>/<k[2:]>: unpack one into that layout."""
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, ARRAYS)
    root = objects(history)
    for pack in list((root / "packs").glob("*.pack")):
        with open(pack, "rb") as f:
            blob = f.read()
        for key, off, n, ok in scan(pack):
            assert ok
            (root / key[:2]).mkdir(exist_ok=True)
            (root / key[:2] / key[2:]).write_bytes(blob[off:off + n])
        pack.unlink()
        pack.with_suffix(".idx").unlink()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "%fm checkout 1")
        assert check(k, CHECK).split() == EXPECT.split()


def test_a_bundle_carries_the_packs(tmp_path: Path) -> None:
    history, bundle, other = tmp_path / "h.duckdb", tmp_path / "b.fmb", tmp_path / "o" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, ARRAYS)
    assert list((objects(history) / "packs").glob("*.pack"))
    for argv in ([FM, "export", str(history), "-o", str(bundle)],
                 [FM, "import", str(bundle), "--history", str(other), "--trust"]):
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert list((objects(other) / "packs").glob("*.pack"))
    with Kernel(env={"FM_HISTORY": str(other)}) as k:
        check(k, "%fm checkout 1")
        assert check(k, CHECK).split() == EXPECT.split()
