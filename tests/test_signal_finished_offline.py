"""`fm signal` with no kernel live refuses a run that has finished, as the
kernel does (RunFinished): a signal stored for a finished run would never be
taken, and saying "kept ... delivered when a kernel resumes the run" is a lie."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kernel_driver import Kernel, query

FM = str(Path(sys.executable).parent / "fm")

FLOW = r'''
import fm_kernel as fm

@fm.flow
def done_at_once(x):
    return x + 1

r = done_at_once.start(1)
print(r.id, r.result(60))
'''


def fm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FM, *args], capture_output=True, text=True, timeout=120)


def test_offline_signal_to_finished_run_is_refused(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        out = k.execute(FLOW)
    run_id, value = out.text().split()[-2:]
    assert value == "2"
    before = query(history, "SELECT count(*) FROM fm_events WHERE kind = 'signal'")[0][0]
    r = fm("signal", run_id[:8], "go", "--history", str(history))
    assert r.returncode == 1, r.stdout
    assert "has finished (succeeded)" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    after = query(history, "SELECT count(*) FROM fm_events WHERE kind = 'signal'")[0][0]
    assert after == before  # nothing stored that no run will ever take
