"""overlap= on scheduled flows: "skip" (default) starts no run for a slot
while the previous run is still going; "allow" starts one every slot; any
other value ("queue" included, not built) is refused where the flow is defined."""

from __future__ import annotations

import time
from pathlib import Path

from kernel_driver import Kernel, query

FLOWS = r'''
import time
import fm_kernel as fm

@fm.flow(schedule="* * * * * *")
def skipping():
    time.sleep(3.5)

@fm.flow(schedule="* * * * * *", overlap="allow")
def allowing():
    time.sleep(3.5)
'''


def test_skip_is_default_and_allow_overlaps(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute(FLOWS).status == "ok"
        time.sleep(7.5)
        bad = k.execute('@fm.flow(schedule="* * * * *", overlap="queue")\ndef q(): pass')
        assert bad.status == "error" and "overlap='queue'" in bad.content["evalue"]
        assert k.execute("print(3)").status == "ok"
    counts = dict(query(history, "SELECT flow, count(DISTINCT run_id) FROM runs GROUP BY flow"))
    assert 1 <= counts.get("skipping", 0) <= 3, counts   # one run per ~4 s at most
    assert counts.get("allowing", 0) >= 5, counts         # one per second
