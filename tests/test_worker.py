"""`fm worker`: pending runs and schedules progress with no notebook open;
SIGTERM stops it cleanly and a restart loses nothing. `fm runs` and
`fm signal` against a live worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from functools import partial

from kernel_driver import Kernel, query
from kernel_driver import wait_until as _wait_until

wait_until = partial(_wait_until, poll=0.1)

FM = str(Path(sys.executable).parent / "fm")

FLOW = r'''
import os, time
import fm_kernel as fm
D = {d!r}

@fm.step
def note(tag):
    with open(os.path.join(D, tag), "a") as f:
        f.write("x\n")
    return tag

@fm.flow
def approval(order):
    note(order + ".asked")
    answer = fm.wait_for("approve", timeout=120)
    note(order + ".answered")
    return {{"order": order, "approved": answer}}

@fm.flow(schedule="* * * * * *")
def heartbeat():
    note("beat-" + str(int(time.time())))
'''


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}


def fm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FM, *args], capture_output=True, text=True, env=env(), timeout=60)



def beats(d: Path) -> int:
    return len(list(d.glob("beat-*")))


def test_worker_resumes_pending_runs_and_schedules_and_stops_cleanly(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    marks = tmp_path / "marks"
    marks.mkdir()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute(FLOW.format(d=str(marks)))
        assert r.status == "ok", r.content
        r = k.execute("run = approval.start('A-7')\nrun_id = run.id\nprint(run_id)")
        run_id = r.text().strip()
        wait_until(lambda: (marks / "A-7.asked").exists(), what="the run to wait")
    # the notebook is closed: nothing runs the flow now
    assert not (marks / "A-7.answered").exists()

    worker = subprocess.Popen([FM, "worker", "--history", str(history)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: Path(str(history) + ".endpoint.json").exists(), what="the worker's endpoint")
        wait_until(lambda: beats(marks) >= 2, timeout=20, what="scheduled beats under the worker")
        listed = fm("runs", "--history", str(history))
        assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
        sent = fm("signal", run_id, "approve", "--data", json.dumps(True), "--history", str(history))
        assert sent.returncode == 0 and "delivered" in sent.stdout, sent.stderr
        wait_until(lambda: (marks / "A-7.answered").exists(), what="the run to finish")
        wait_until(lambda: "succeeded" in fm("runs", "--history", str(history)).stdout
                   or "done" in fm("runs", "--history", str(history)).stdout,
                   what="the run's status")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "stopping" in err
    finally:
        if worker.poll() is None:
            worker.kill()
    assert (marks / "A-7.asked").read_text() == "x\n"  # completed step never ran twice
    assert (marks / "A-7.answered").read_text() == "x\n"
    (status, result), = query(history, "SELECT status, result FROM runs WHERE run_id = ?", [run_id])
    assert json.loads(result) == {"order": "A-7", "approved": True}
    before = beats(marks)
    # a restart loses nothing: the schedule picks up again
    worker = subprocess.Popen([FM, "worker", "--history", str(history)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: beats(marks) > before, timeout=20, what="beats after restart")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert worker.returncode == 0


def test_worker_and_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = fm("worker", "--history", str(tmp_path / "none.duckdb"))
    assert r.returncode == 1 and "no history at" in r.stderr
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.execute("x = 1")
        # --exit-if-held: as before the hand-over, for scripts that expect it;
        # without it the worker stands by (tests/test_handover.py)
        held = fm("worker", "--exit-if-held", "--history", str(history))
        assert held.returncode == 1 and "in use by" in held.stderr
        assert held.stderr.count("\n") == 1
        bad = fm("signal", "nope", "go", "--data", "{not json", "--history", str(history))
        assert bad.returncode == 1 and "not valid JSON" in bad.stderr
        unknown = fm("signal", "nope", "go", "--history", str(history))
        assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    offline = fm("signal", "nope", "go", "--history", str(history))
    assert offline.returncode == 1 and "no flow run 'nope'" in offline.stderr
    assert "no flow runs" in fm("runs", "--history", str(history)).stdout
