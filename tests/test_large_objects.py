"""Large arrays through a real kernel: a one-element edit costs about one
chunk on disk and rewinds exactly, by patching the live array when nothing
else can see it; a kill -9 right after a large capture was acknowledged
loses nothing."""

from __future__ import annotations

from pathlib import Path

import json

from kernel_driver import Kernel, check, query

MB = 1024 * 1024
N = 48 * MB // 8  # float64 elements: 48 MiB, 24 chunks of 2 MiB


def objects_bytes(history: Path) -> int:
    root = Path(str(history) + ".objects")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def head(k: Kernel) -> int:
    return int(check(k, "print(__import__('fm_kernel').runtime.current().head)").split()[-1])


def test_one_element_edit_costs_one_chunk_and_rewinds_exactly(tmp_path: Path) -> None:
    history = tmp_path / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, f"import numpy as np, hashlib\nbig = np.arange({N}, dtype=np.float64)")
        before_edit = head(k)
        first = objects_bytes(history)
        assert first >= N * 8 * 0.9, first  # the array itself is stored
        check(k, f"big[{N // 2}] = -1.0")
        grown = objects_bytes(history) - first
        # one dirty 2 MiB chunk plus manifests; a full rewrite would be 48 MiB
        assert grown < 4 * MB, f"a one-element edit wrote {grown} bytes"
        check(k, f"assert big[{N // 2}] == -1.0")
        r = k.execute(f"%fm rewind {before_edit}")
        assert r.status == "ok", r.text()
        check(k, f"assert big.dtype == np.float64 and big.shape == ({N},)\n"
                 f"assert np.array_equal(big, np.arange({N}, dtype=np.float64))")


def test_a_rewind_patches_the_live_array_unless_something_else_holds_it(tmp_path: Path) -> None:
    history = tmp_path / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, f"import numpy as np, json\nbig = np.arange({N}, dtype=np.float64)")
        before_edit = head(k)
        check(k, f"__id__ = id(big)\nbig[{N // 2}] = -1.0")  # a dunder: in no state
        assert k.execute(f"%fm rewind {before_edit}").status == "ok"
        check(k, f"assert id(big) == __id__ and big[{N // 2}] == {N // 2}\n"
                 f"assert np.array_equal(big, np.arange({N}, dtype=np.float64))")
        # held by a module attribute, outside every state: never patched
        check(k, "json.held = big\nbig[0] = -1.0")
        assert k.execute(f"%fm rewind {before_edit}").status == "ok"
        check(k, f"assert json.held[0] == -1.0 and big[0] == 0.0 and big is not json.held\n"
                 f"assert np.array_equal(big, np.arange({N}, dtype=np.float64))")
    moves = [json.loads(p) for (p,) in query(
        history, "SELECT payload FROM events WHERE kind = 'rewind' ORDER BY seq")]
    assert [m["patched"] for m in moves] == [["big"], []]
    assert moves[0]["read_bytes"] <= 2 * MB < N * 8 <= moves[1]["read_bytes"]


def test_kill9_after_an_acknowledged_large_capture_loses_nothing(tmp_path: Path) -> None:
    history = tmp_path / "history.duckdb"
    env = {"FM_HISTORY": str(history)}
    k = Kernel(env=env)
    try:
        check(k, f"import numpy as np\nbig = np.arange({N}, dtype=np.float64)\nbig[7] = 3.5")
        acked = head(k)
        # a second large capture in flight when the process dies
        k.kc.execute(f"big2 = np.ones({N})")
        __import__("time").sleep(0.3)
    finally:
        k.kill9()
    with Kernel(env=env) as k2:
        assert head(k2) >= acked
        check(k2, f"assert big[7] == 3.5 and big.shape == ({N},)\n"
                  f"import numpy as np\nexp = np.arange({N}, dtype=np.float64); exp[7] = 3.5\n"
                  "assert np.array_equal(big, exp)")
