"""`%fm runs` and `fm runs` say what a workflow engineer asks first: which
runs failed and why (the error's first line, no internal frames), which run
started which, and what a pending run waits in; filtered by --failed,
--status and --flow (issue 15, observability)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kernel_driver import Kernel, check

FLOWS = '''
import fm_kernel as fm

@fm.flow
def kid(x):
    return x * 2

@fm.flow
def parent(x):
    return kid.start(x).result(10)

@fm.flow
def bad():
    raise ValueError("no good\\nsecond line")

@fm.flow
def waits():
    return fm.wait_for("go", timeout=60)

parent(2)
try:
    bad()
except ValueError:
    pass
w = waits.start()
import time
time.sleep(0.5)
'''


def rows(text: str) -> dict[str, list[str]]:
    """flow -> its row's cells, split on runs of two spaces."""
    import re

    out = {}
    for line in text.splitlines()[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        out[cells[1]] = cells
    return out


def test_runs_show_errors_parents_children_and_waits_and_filter(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, FLOWS)
        every = check(k, "%fm runs")
        header = every.splitlines()[0].split()
        assert header[-4:] == ["parent", "children", "waiting_in", "error"], header
        by_flow = rows(every)
        assert "ValueError: no good" in by_flow["bad"][-1] and "second line" not in every
        assert "fm.wait_for(go)" in by_flow["waits"]
        parent_id = by_flow["parent"][0]
        assert parent_id[:8] in by_flow["kid"] and by_flow["parent"][-1] == "1"
        failed = check(k, "%fm runs --failed")
        assert set(rows(failed)) == {"bad"}, failed
        assert set(rows(check(k, "%fm runs --status waiting"))) == {"waits"}
        assert check(k, "%fm runs --flow nothing").strip() == "no flow runs match"
    fm = str(Path(sys.executable).parent / "fm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    out = subprocess.run([fm, "runs", "--history", str(history), "--failed"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert set(rows(out.stdout)) == {"bad"} and "ValueError: no good" in out.stdout
