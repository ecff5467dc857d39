"""The Python task worker (``fm.serve_tasks`` and ``fm task-worker``) against
a real kernel over real HTTP: results recorded once, a body's failure as the
attempt's outcome (retried, or at once for good with NonRetryable), a lease
kept by heartbeats while a body outlasts it, and a worker that keeps going
through a kill -9 and restart of the kernel, finding the new token in the
history's endpoint file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from kernel_driver import Kernel, check, endpoint_info, flow_kernel, fm_cli, http_json, wait_until

import fm_kernel as fm

FLOWS = r'''
@fm.flow
def three(n):
    return [fm.task("py", {"n": n, "part": p}, retries=1) for p in "abc"]

@fm.flow
def doomed():
    return fm.task("py", {"fatal": True}, retries=3)

@fm.flow
def long_one():
    return fm.task("py", {"sleep": 3}, heartbeat=1)

@fm.flow
def five():
    return [fm.task("cmd", {"n": i}) for i in range(5)]
'''


def api(k: Kernel, method: str, path: str, body: object = None, timeout: float = 30):
    info = endpoint_info(k.path)  # type: ignore[attr-defined]
    data = None if body is None else json.dumps(body).encode()
    return http_json(info["url"] + path, method, data, token=info["token"], timeout=timeout)


def sql(k: Kernel, q: str, params: list | None = None) -> list[list]:
    status, body = api(k, "POST", "/sql", {"query": q, "params": params or []})
    assert status == 200, body
    return body["rows"]


def test_serve_tasks_results_once_failures_retried_or_final_and_heartbeats(tmp_path: Path) -> None:
    attempts: dict[str, int] = {}

    def body(p: dict) -> dict:
        key = p.get("part") or ("fatal" if p.get("fatal") else "sleep")
        attempts[key] = attempts.get(key, 0) + 1
        if p.get("fatal"):
            raise fm.NonRetryable("the order does not exist")
        if p.get("part") == "b" and attempts["b"] == 1:
            raise ValueError("flaky on the first go")
        if p.get("sleep"):
            threading.Event().wait(p["sleep"])  # three leases of 1 s: heartbeats keep it
        return {"n": p.get("n"), "part": p.get("part"), "try": attempts[key]}

    with flow_kernel(tmp_path / "h.duckdb") as k:
        check(k, FLOWS)
        stop = threading.Event()
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(
            fm.serve_tasks("py", body, history=k.path, worker="py-1", wait=1, stop=stop)))
        t.start()
        try:
            out = check(k, "print(three(4)); print(long_one())", timeout=90)
            err = check(k, "try:\n    doomed()\nexcept Exception as e:\n    print('failed:', type(e).__name__, e)")
        finally:
            stop.set()
            t.join(30)
    assert "[{'n': 4, 'part': 'a', 'try': 1}, {'n': 4, 'part': 'b', 'try': 2}, " \
           "{'n': 4, 'part': 'c', 'try': 1}]" in out, out
    assert "'try': 1" in out.splitlines()[1], out  # the long body's one attempt kept its lease
    assert "failed: TaskFailed" in err and "the order does not exist" in err, err
    assert attempts == {"a": 1, "b": 2, "c": 1, "sleep": 1, "fatal": 1}, attempts  # no retry after NonRetryable
    assert done == [4]  # a, b (second attempt), c and the long one recorded; b's first and fatal failed


def _task_worker(history: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    return subprocess.Popen([str(Path(sys.executable).parent / "fm"), "task-worker",
                             "--history", str(history), *args], env=env, start_new_session=True,
                            stderr=subprocess.PIPE, text=True)


DOUBLE = [sys.executable, "-c",
          "import json, sys; p = json.load(sys.stdin); print(json.dumps({'twice': 2 * p['n']}))"]


def test_fm_task_worker_command_keeps_going_through_a_kernel_kill9_and_restart(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    gate = tmp_path / "gate"
    # the command waits for the gate after the second task: the kill lands mid-stream
    slow = [sys.executable, "-c",
            "import json, os, sys, time; p = json.load(sys.stdin)\n"
            f"while p['n'] >= 2 and not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
            "print(json.dumps({'twice': 2 * p['n']}))"]
    w = _task_worker(history, "cmd", "--wait", "1", "--name", "cmd-1", "--", *slow)
    try:
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            check(k, "import fm_kernel as fm\n" + FLOWS)
            k.path = history  # type: ignore[attr-defined]
            rid = api(k, "POST", "/flows/five/runs", {})[1]["run_id"]
            wait_until(lambda: sql(k, "SELECT count(*) FROM tasks WHERE status = 'claimed'"
                                      " AND run_id = ?", [rid])[0][0] == 1
                       and sql(k, "SELECT count(*) FROM tasks WHERE status = 'completed'")[0][0] == 2,
                       timeout=60, what="two tasks done and the third claimed")
            token = endpoint_info(history)["token"]
            k.kill9()
        gate.write_text("go")  # the worker now finishes task 3 while no kernel is there
        with Kernel(env={"FM_HISTORY": str(history)}) as k2:
            k2.path = history  # type: ignore[attr-defined]
            check(k2, "1")
            wait_until(lambda: endpoint_info(history)["token"] != token, what="the new kernel's endpoint")
            status, body = api(k2, "GET", f"/runs/{rid}/result?wait=60", timeout=90)
            assert status == 200 and body["status"] == "succeeded", body
            assert body["result"] == [{"twice": 2 * i} for i in range(5)], body
            rows = sql(k2, "SELECT position, status, attempt, worker FROM tasks WHERE run_id = ?"
                           " ORDER BY position", [rid])
            completions = sql(k2, "SELECT count(*) FROM events WHERE run_id = ?"
                                  " AND kind = 'task_completed'", [rid])[0][0]
            listed = fm_cli("tasks", "--history", str(history), "--queue", "cmd")  # through the kernel
            none = fm_cli("tasks", "--history", str(history), "--status", "failed")
    finally:
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=30)
    assert [r[1] for r in rows] == ["completed"] * 5 and {r[3] for r in rows} == {"cmd-1"}, rows
    assert completions == 5, completions  # each result recorded once, the one across the kill too
    assert w.returncode == 0, err
    assert listed.returncode == 0 and listed.stdout.count("completed") == 5, listed
    assert listed.stdout.count("cmd-1") == 5 and "task" in listed.stdout.splitlines()[0], listed.stdout
    assert none.stdout.strip() == "no tasks in this history match", none


def test_fm_task_worker_bad_usage_is_one_line(tmp_path: Path) -> None:
    for args, said in ((["task-worker", "q"], "give the task body"),
                       (["task-worker", "q", "no_such_module:f"], "no_such_module"),
                       (["task-worker", "q", "render"], "not MODULE:FUNCTION"),
                       (["task-worker", "q", "m:f", "--", "true"], "give the task body"),
                       (["task-worker", "q", "--url", "http://127.0.0.1:1", "--", "true"], "go together")):
        cut = args.index("--") if "--" in args else len(args)  # options go before the command
        r = fm_cli(*args[:cut], "--history", str(tmp_path / "h.duckdb"), *args[cut:])
        assert r.returncode == 1 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
