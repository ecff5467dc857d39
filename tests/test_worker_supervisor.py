"""`fm worker` outlives its serving process (docs/reliability.md, "One
writer at a time"): a serving process killed -9 is replaced, with one line,
and the new one goes on with the schedule (once per slot) and the runs it
left; and the supervisor killed -9 takes its serving process with it, so no
orphan holds the history. Real processes, real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from kernel_driver import Kernel, check, query, wait_until
from test_handover import FLOW, SECRET, endpoint, get, kernel_pids, post, ran_by, slots, start_worker, \
    stop_worker

from fm_kernel.cli import handover
from fm_kernel.record.handover import holder

NAP = r'''
@fm.flow
def napper(item):
    mark("dozing-" + item)
    fm.sleep(12)
    mark("woke-" + item)
    return item
'''


def prepare(tmp_path: Path) -> tuple[Path, Path]:
    history, marks = tmp_path / "h.duckdb", tmp_path / "marks"
    marks.mkdir()
    with Kernel(env={"FM_HISTORY": str(history), "FM_EVENT_SECRET_TICK": SECRET}) as k:
        check(k, FLOW.format(d=str(marks)) + NAP)
    return history, marks


def gone(pid: int) -> bool:
    """Not running any more (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith(("Z", "X"))
    except OSError:
        return True


def test_a_serving_process_killed_9_is_replaced_and_its_work_goes_on(tmp_path: Path) -> None:
    history, marks = prepare(tmp_path)
    worker = start_worker(history)
    try:
        info = endpoint(history)
        first = info["pid"]
        status, body = post(f"{info['url']}/flows/napper/runs", {"args": ["N"]}, token=info["token"])
        assert status in (200, 201), body
        run_id = body["run_id"]
        wait_until(lambda: (marks / "dozing-N").exists(), timeout=60, what="the run to fall asleep")
        wait_until(lambda: kernel_pids(marks, "beat-", first) >= 2, timeout=60,
                   what="beats under the first serving process")
        os.kill(first, signal.SIGKILL)
        t0 = time.time()
        wait_until(lambda: endpoint(history).get("pid") not in (None, first)
                   and endpoint(history).get("role") == "worker", timeout=90,
                   what="a new serving process")
        second = endpoint(history)["pid"]
        assert endpoint(history)["port"] == info["port"] and endpoint(history)["token"] == info["token"]
        wait_until(lambda: kernel_pids(marks, "beat-", second) >= 2, timeout=60,
                   what="beats under the new serving process")
        status, body = get(f"{info['url']}/runs/{run_id}/result?wait=90", token=info["token"])
        assert status == 200 and body["status"] == "succeeded" and body["result"] == "N", body
        assert worker.poll() is None, "the supervisor ended with its serving process"
    finally:
        err = stop_worker(worker)
    assert worker.returncode == 0, err
    notes = [ln for ln in err.splitlines() if f"serving process {first} was killed by SIGKILL" in ln]
    assert len(notes) == 1 and "starting another" in notes[0], err
    assert ran_by(marks, "dozing-")["dozing-N"] == [first]  # asleep, not started again
    assert ran_by(marks, "woke-")["woke-N"] == [second]
    assert all(len(pids) == 1 for pids in ran_by(marks, "beat-").values()), ran_by(marks, "beat-")
    recorded = slots(history)
    assert len(recorded) == len(set(recorded)), "a slot was recorded twice"
    assert [s for s in recorded if s > t0 + 1], "no slot after the kill"
    assert query(history, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)]


def test_a_supervisor_killed_9_leaves_no_serving_process_holding_the_history(tmp_path: Path) -> None:
    history, _ = prepare(tmp_path)
    worker = start_worker(history)
    try:
        serving = endpoint(history)["pid"]
        assert holder(history) == serving
        worker.kill()
        worker.wait(timeout=60)
        wait_until(lambda: gone(serving), timeout=60, what=f"serving process {serving} to end")
        assert holder(history) is None
    finally:
        stop_worker(worker)
        if not gone(serving):  # never left behind by a failed test
            os.kill(serving, signal.SIGKILL)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:  # the real history, not a sibling
        out = check(k, "import fm_kernel as fm\nprint('flows', len(fm.runs()))")
        assert "flows" in out
    assert not [p for p in tmp_path.glob("h.*.duckdb")]


def test_the_supervisor_gives_up_after_repeated_fast_deaths_saying_why(capsys) -> None:
    crashes = handover.Crashes()
    pauses = [crashes.died(100 + i, -signal.SIGKILL, 0.2) for i in range(handover.CRASHES_ALLOWED)]
    err = capsys.readouterr().err.splitlines()
    assert pauses[:-1] == sorted(pauses[:-1]) and all(p > 0 for p in pauses[:-1]), pauses
    assert pauses[-1] is None
    assert len(err) == handover.CRASHES_ALLOWED
    assert "process 100 was killed by SIGKILL" in err[0] and "starting another" in err[0], err
    assert err[-1].startswith("fm worker: giving up") and "5 times" in err[-1], err


def test_deaths_far_apart_never_add_up_to_giving_up() -> None:
    crashes = handover.Crashes()
    for i in range(3 * handover.CRASHES_ALLOWED):
        crashes.times = type(crashes.times)(t - handover.CRASH_WINDOW_S for t in crashes.times)
        assert crashes.died(i, 1, 90.0) == handover.BACKOFF_S[0]
