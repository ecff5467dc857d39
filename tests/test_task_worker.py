"""The Python task worker (``fm.serve_tasks`` and ``fm task-worker``) against
a real kernel over real HTTP: results recorded once, a body's failure as the
attempt's outcome (retried, or at once for good with NonRetryable), a lease
kept by heartbeats while a body outlasts it, and a worker that keeps going
through a kill -9 and restart of the kernel, finding the new token in the
history's endpoint file. What the worker does with the kernel's refusals,
also against real processes: a completion whose lease ran out while the body
ran is answered 409 and dropped with a line, and one answered 503 during a
hand-over to a kernel is sent again until it is recorded, once."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kernel_driver import (Kernel, check, endpoint_info, flow_kernel, fm_cli, http_json, send_retrying,
                           wait_until)

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
def late():
    return fm.task("lq", {"v": 1}, timeout=3, retries=1)

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


def _logged(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("fm_kernel") and all(w in r.getMessage() for w in words)]


def test_a_completion_after_the_lease_ran_out_is_dropped_and_the_worker_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fm_kernel")
    tries: list[int] = []
    with flow_kernel(tmp_path / "h.duckdb") as k:
        check(k, FLOWS)

        def body(p: dict) -> dict:
            tries.append(len(tries) + 1)
            if len(tries) == 1:  # outlive the 3 s lease: the task is offered again meanwhile
                wait_until(lambda: sql(k, "SELECT count(*) FROM events WHERE kind = 'task_expired'")[0][0],
                           timeout=60, what="the first lease to run out")
            return {"attempt": len(tries)}

        rid = api(k, "POST", "/flows/late/runs", {})[1]["run_id"]
        stop = threading.Event()
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(fm.serve_tasks(
            "lq", body, history=k.path, worker="late-1", wait=1, stop=stop, max_tasks=1)))
        t.start()
        try:
            status, res = api(k, "GET", f"/runs/{rid}/result?wait=60", timeout=90)
            t.join(60)
        finally:
            stop.set()
            t.join(30)
        tid, result = sql(k, "SELECT task_id, result FROM tasks WHERE run_id = ?", [rid])[0]
        completed = sql(k, "SELECT count(*) FROM events WHERE run_id = ?"
                           " AND kind = 'task_completed'", [rid])[0][0]
    assert status == 200 and res["status"] == "succeeded", res
    assert res["result"] == {"attempt": 2}, res  # the re-offered attempt's result, not the late one
    assert json.loads(result) == {"attempt": 2} and completed == 1, (result, completed)
    assert tries == [1, 2] and done == [1], (tries, done)  # went on to the next claim after the 409
    dropped = _logged(caplog, tid, "409", "dropped")
    assert len(dropped) == 1, [r.getMessage() for r in caplog.records]


HANDED = r'''
import fm_kernel as fm

@fm.flow
def job():
    return fm.task("hq", {"v": 1}, timeout=300)
'''


def _answers_503(info: dict) -> bool:
    """One plain request (no retry): is the endpoint in its hand-over mode?"""
    req = urllib.request.Request(info["url"] + "/runs", headers={"Authorization": f"token {info['token']}"})
    try:
        with urllib.request.urlopen(req, timeout=10):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 503
    except OSError:
        return False


def _retrying(history: Path, path: str) -> tuple[int, dict]:
    info = endpoint_info(history)
    req = urllib.request.Request(info["url"] + path, headers={"Authorization": f"token {info['token']}"})
    return send_retrying(req)


def _long_poll(info: dict) -> None:
    """A claim left waiting on an empty queue: the draining worker waits up to
    its drain time for it, answering every new request 503 meanwhile."""
    req = urllib.request.Request(info["url"] + "/queues/idle/claim", method="POST",
                                 data=json.dumps({"worker": "idle", "wait": 20}).encode(),
                                 headers={"Authorization": f"token {info['token']}"})
    try:
        urllib.request.urlopen(req, timeout=60).close()
    except OSError:
        pass  # cut off by the hand-over: what it was for


def test_a_completion_answered_503_in_a_hand_over_is_sent_again_and_recorded_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from test_handover import env, start_worker, stop_worker

    caplog.set_level(logging.INFO, logger="fm_kernel")
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, HANDED)  # the flow's code is in the history: `fm worker` restores it
    worker = start_worker(history)
    claimed, seen_503, stop = threading.Event(), threading.Event(), threading.Event()
    done: list[int] = []
    try:
        info = endpoint_info(history)

        def body(p: dict) -> dict:
            claimed.set()
            wait_until(lambda: _answers_503(info), timeout=120, what="the hand-over's 503", poll=0.01)
            seen_503.set()
            return {"done": p["v"]}

        req = urllib.request.Request(info["url"] + "/flows/job/runs", data=b"{}", method="POST",
                                     headers={"Authorization": f"token {info['token']}"})
        rid = send_retrying(req)[1]["run_id"]
        t = threading.Thread(target=lambda: done.append(fm.serve_tasks(
            "hq", body, history=history, worker="hq-1", wait=1, stop=stop, max_tasks=1)))
        t.start()
        assert claimed.wait(60), "the task was never claimed"
        threading.Thread(target=_long_poll, args=(info,), daemon=True).start()
        with Kernel(env=env(FM_HISTORY=str(history))) as k2:  # takes the history over
            check(k2, "1")
            t.join(120)
            k2.path = history  # type: ignore[attr-defined]
            status, res = _retrying(history, f"/runs/{rid}/result?wait=60")
            completed = sql(k2, "SELECT count(*) FROM events WHERE run_id = ?"
                                " AND kind = 'task_completed'", [rid])[0][0]
            tid = sql(k2, "SELECT task_id FROM tasks WHERE run_id = ?", [rid])[0][0]
    finally:
        stop.set()
        err = stop_worker(worker)
    assert seen_503.is_set() and done == [1], done
    assert status == 200 and res["status"] == "succeeded" and res["result"] == {"done": 1}, res
    assert completed == 1, completed
    retried = _logged(caplog, f"POST /tasks/{tid}/complete answered 503")
    assert retried, ("the completion never met a 503: the test proves nothing",
                     [r.getMessage() for r in caplog.records])
    assert worker.returncode == 0, err
