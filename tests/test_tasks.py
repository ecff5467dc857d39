"""The evented edge over real HTTP: the run routes (list, wait for a result,
cancel, start once per id), and external tasks (fm.task) done by worker
processes in other languages, with kill -9 of a worker, stale completions
and exactly-once results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kernel_driver import Kernel, endpoint_info, flow_kernel, wait_until

WORKERS = Path(__file__).resolve().parent / "workers"
needs_curl = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="curl is not installed: the bash worker needs it")

SETUP = r'''
import time
import fm_kernel.flows as fm

@fm.flow
def quick(x):
    return {"x": x}

@fm.flow
def slow(seconds):
    fm.sleep(seconds)
    return "slept"

@fm.flow
def waits():
    return fm.wait_for("go", timeout=300)
'''


def check(k: Kernel, code: str, timeout: float = 60) -> str:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.content.get("evalue"), "\n".join(r.content.get("traceback") or []))
    return r.text()


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def __call__(self, method: str, path: str, body: object = None, token: bool = True,
                 headers: dict | None = None, timeout: float = 30) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"token {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def tk(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "history.duckdb"
    with flow_kernel(path, SETUP) as k:
        k.api = Api(k.url, k.token)  # type: ignore[attr-defined]
        k.info = endpoint_info(path)  # type: ignore[attr-defined]
        yield k


def sql(k: Kernel, q: str, params: list | None = None) -> list[list]:
    status, body = k.api("POST", "/sql", {"query": q, "params": params or []})  # type: ignore[attr-defined]
    assert status == 200, body
    return body["rows"]


# -- the run routes ---------------------------------------------------------------------

def test_list_runs_filters_by_flow_and_status_and_needs_the_token(tk: Kernel) -> None:
    api = tk.api  # type: ignore[attr-defined]
    ids = [api("POST", "/flows/quick/runs", {"args": [i]})[1]["run_id"] for i in range(3)]
    for i in ids:
        assert api("GET", f"/runs/{i}/result?wait=10")[0] == 200
    status, body = api("GET", "/runs?flow=quick&status=succeeded&limit=2")
    assert status == 200 and len(body["runs"]) == 2, body
    assert {r["flow"] for r in body["runs"]} == {"quick"}
    assert body["runs"][0]["run_id"] in ids and body["runs"][0]["started_at"] >= body["runs"][1]["started_at"]
    assert api("GET", "/runs?flow=no-such-flow")[1] == {"runs": []}
    assert api("GET", "/runs", token=False)[0] == 401
    assert api("GET", "/runs?limit=0")[0] == 400


def test_result_long_poll_answers_when_the_run_ends_or_202_after_wait(tk: Kernel) -> None:
    api = tk.api  # type: ignore[attr-defined]
    rid = api("POST", "/flows/slow/runs", {"args": [1.0]})[1]["run_id"]
    t0 = time.monotonic()
    status, body = api("GET", f"/runs/{rid}/result?wait=20")
    took = time.monotonic() - t0
    assert status == 200 and body["finished"] and body["result"] == "slept", body
    assert 0.5 < took < 5, took
    wid = api("POST", "/flows/waits/runs", {})[1]["run_id"]
    t0 = time.monotonic()
    status, body = api("GET", f"/runs/{wid}/result?wait=0.5")
    assert status == 202 and body["finished"] is False and body["status"] in ("running", "waiting")
    assert time.monotonic() - t0 >= 0.45
    # 40 waiters at once hold no threads: the endpoint still answers at once
    replies: list[int] = []
    waiters = [threading.Thread(target=lambda: replies.append(api("GET", f"/runs/{wid}/result?wait=3")[0]))
               for _ in range(40)]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert api("GET", f"/runs/{wid}")[0] == 200
    assert time.monotonic() - t0 < 1.0, "a plain GET waited behind the long polls"
    assert api("POST", f"/runs/{wid}/signals/go", {"ok": 1})[0] == 200
    for w in waiters:
        w.join(20)
    assert replies == [200] * 40, replies
    assert api("GET", "/runs/nope/result")[0] == 404


def test_cancel_route(tk: Kernel) -> None:
    api = tk.api  # type: ignore[attr-defined]
    rid = api("POST", "/flows/waits/runs", {})[1]["run_id"]
    wait_until(lambda: api("GET", f"/runs/{rid}")[1]["status"] == "waiting", what="the run to wait")
    status, body = api("POST", f"/runs/{rid}/cancel")
    assert status == 200 and body["cancelled"] is True, body
    assert api("GET", f"/runs/{rid}/result?wait=10")[1]["status"] == "cancelled"
    status, body = api("POST", f"/runs/{rid}/cancel")
    assert status == 409 and "cancelled" in body["error"], body
    assert api("POST", "/runs/nope/cancel")[0] == 404


def test_start_once_per_run_id_or_idempotency_key(tk: Kernel) -> None:
    api = tk.api  # type: ignore[attr-defined]
    s1, b1 = api("POST", "/flows/quick/runs", {"args": [1], "run_id": "order-1001"})
    s2, b2 = api("POST", "/flows/quick/runs", {"args": [2], "run_id": "order-1001"})
    assert (s1, b1["run_id"], b1["started"]) == (201, "order-1001", True)
    assert (s2, b2["run_id"], b2["started"]) == (200, "order-1001", False)
    # many at once with one key: one run
    got: list[tuple[int, str]] = []

    def start() -> None:
        s, b = api("POST", "/flows/quick/runs", {"args": [3]}, headers={"Idempotency-Key": "delivery 42/a"})
        got.append((s, b["run_id"]))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len({rid for _, rid in got}) == 1 and sorted(s for s, _ in got) == [200] * 7 + [201], got
    assert api("POST", "/flows/slow/runs", {"run_id": "order-1001"})[0] == 400  # another flow's id
    assert api("POST", "/flows/quick/runs", {"run_id": "no spaces"})[0] == 400
    out = check(tk, "a = quick.start(5, run_id='py-1'); b = quick.start(6, run_id='py-1')\n"
                    "print(a is b, a.result(10), len(fm.runs().query('run_id == \"py-1\"')))")
    assert out.split() == ["True", "{'x':", "5}", "1"], out
    assert sql(tk, "SELECT count(*) FROM runs WHERE run_id IN ('order-1001', ?)", [got[0][1]]) == [[2]]


# -- external tasks -----------------------------------------------------------------------

TASK_FLOWS = r'''
@fm.flow
def pipeline(n, last_queue="sh"):
    a = fm.task("sh", {"n": n, "part": "a"}, retries=2)
    b = fm.task("sh", {"n": n, "part": "b"}, retries=2)
    c = fm.task(last_queue, {"n": n, "part": "c"})
    return [a, b, c]

@fm.flow
def one(queue, heartbeat=None, retries=0):
    return fm.task(queue, {"job": queue}, heartbeat=heartbeat, retries=retries)
'''


def worker(tk: Kernel, queue: str, name: str, max_tasks: int = 0, **env: str) -> subprocess.Popen:
    api = tk.api  # type: ignore[attr-defined]
    return subprocess.Popen(["bash", str(WORKERS / "curl_worker.sh"), api.url, api.token, queue, name,
                             str(max_tasks)], env={**os.environ, **env}, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)


@pytest.fixture(scope="module")
def tasks_defined(tk: Kernel) -> Kernel:
    check(tk, TASK_FLOWS)
    return tk


@needs_curl
def test_three_tasks_done_by_a_curl_worker_results_recorded_once(tasks_defined: Kernel) -> None:
    tk = tasks_defined
    api = tk.api  # type: ignore[attr-defined]
    rid = api("POST", "/flows/pipeline/runs", {"args": [7]})[1]["run_id"]
    w = worker(tk, "sh", "bash-1", 3)
    try:
        status, body = api("GET", f"/runs/{rid}/result?wait=60")
        assert status == 200 and body["status"] == "succeeded", body
        assert w.wait(20) == 0
    finally:
        stop(w)
    assert [r["input"]["part"] for r in body["result"]] == ["a", "b", "c"]
    assert {r["worker"] for r in body["result"]} == {"bash-1"} and all(r["input"]["n"] == 7 for r in body["result"])
    rows = sql(tk, "SELECT position, queue, status, attempt, worker, result->>'worker', payload->>'part',"
                   " created_at <= claimed_at AND claimed_at <= finished_at FROM tasks WHERE run_id = ?"
                   " ORDER BY position", [rid])
    assert rows == [[1, "sh", "completed", 1, "bash-1", "bash-1", "a", True],
                    [2, "sh", "completed", 1, "bash-1", "bash-1", "b", True],
                    [3, "sh", "completed", 1, "bash-1", "bash-1", "c", True]], rows
    assert sql(tk, "SELECT kind, count(*) FROM events WHERE run_id = ? AND kind LIKE 'task_%'"
                   " GROUP BY kind ORDER BY kind", [rid]) == \
        [["task_claimed", 3], ["task_completed", 3], ["task_queued", 3]]
    assert sql(tk, "SELECT position, count(*) FILTER (WHERE status = 'ok') FROM run_steps"
                   " WHERE run_id = ? GROUP BY position ORDER BY position", [rid]) == [[1, 1], [2, 1], [3, 1]]
    # replay returns the recorded results: a fork re-executes nothing
    out = check(tk, f"r = fm.get_run({rid!r}).fork(from_step=4); print(r.result(10) == "
                    f"fm.get_run({rid!r}).result(1))")
    assert out.strip() == "True"
    assert sql(tk, "SELECT count(*) FROM tasks")[0][0] == 3 + sql(tk, "SELECT count(*) FROM tasks"
                                                                     " WHERE run_id <> ?", [rid])[0][0]


@needs_curl
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no second runtime")
def test_a_node_worker_beside_the_curl_worker(tasks_defined: Kernel) -> None:
    tk = tasks_defined
    api = tk.api  # type: ignore[attr-defined]
    rid = api("POST", "/flows/pipeline/runs", {"args": [8, "js"]})[1]["run_id"]
    js = subprocess.Popen(["node", str(WORKERS / "node_worker.mjs"), api.url, api.token, "js", "node-1", "1"])
    sh = worker(tk, "sh", "bash-2", 2)
    try:
        status, body = api("GET", f"/runs/{rid}/result?wait=60")
        assert status == 200 and body["status"] == "succeeded", body
        assert js.wait(20) == 0 and sh.wait(20) == 0
    finally:
        stop(sh)
        if js.poll() is None:
            js.kill()
    a, b, c = body["result"]
    assert a["worker"] == b["worker"] == "bash-2"
    assert c == {"worker": "node-1", "attempt": 1, "input": {"n": 8, "part": "c"}, "runtime": "node"}


@needs_curl
def test_a_worker_killed_mid_task_its_lease_expires_and_another_finishes_it_once(
        tasks_defined: Kernel, tmp_path: Path) -> None:
    tk = tasks_defined
    api = tk.api  # type: ignore[attr-defined]
    marks = tmp_path / "marks"
    rid = api("POST", "/flows/one/runs", {"args": ["long"], "kwargs": {"heartbeat": 1.5, "retries": 1}})[1]["run_id"]
    w1 = worker(tk, "long", "doomed", 1, WORK_SECONDS="60", MARKS=str(marks))
    try:
        wait_until(lambda: marks.exists() and marks.read_text(), what="the first worker to start")
        time.sleep(2.5)  # it heartbeats: the lease holds
        assert sql(tk, "SELECT status, attempt FROM tasks WHERE run_id = ?", [rid]) == [["claimed", 1]]
        stop(w1)  # kill -9, mid-task
    finally:
        stop(w1)
    w2 = worker(tk, "long", "rescuer", 1, MARKS=str(marks))
    try:
        status, body = api("GET", f"/runs/{rid}/result?wait=30")
        assert status == 200 and body["result"]["worker"] == "rescuer" and body["result"]["attempt"] == 2, body
    finally:
        stop(w2)
    assert [ln.split()[1:] for ln in marks.read_text().splitlines()] == [["1", "doomed"], ["2", "rescuer"]]
    assert sql(tk, "SELECT status, attempt, worker, error->>'attempt' FROM tasks WHERE run_id = ?", [rid]) == \
        [["completed", 2, "rescuer", "1"]]
    assert sql(tk, "SELECT kind, count(*) FROM events WHERE run_id = ? AND kind IN"
                   " ('task_expired', 'task_completed') GROUP BY kind ORDER BY kind", [rid]) == \
        [["task_completed", 1], ["task_expired", 1]]


def test_a_stale_completion_is_refused_409_and_the_result_never_changes(tasks_defined: Kernel) -> None:
    tk = tasks_defined
    api = tk.api  # type: ignore[attr-defined]
    rid = api("POST", "/flows/one/runs", {"args": ["stale"], "kwargs": {"heartbeat": 1, "retries": 1}})[1]["run_id"]
    status, first = api("POST", "/queues/stale/claim", {"worker": "slow", "wait": 10})
    assert status == 200 and first["attempt"] == 1 and first["payload"] == {"job": "stale"}, first
    assert first["run_id"] == rid
    time.sleep(1.5)  # no heartbeat: the lease runs out
    status, second = api("POST", "/queues/stale/claim", {"worker": "fast", "wait": 10})
    assert status == 200 and second["task_id"] == first["task_id"] and second["attempt"] == 2
    tid = first["task_id"]
    status, body = api("POST", f"/tasks/{tid}/complete", {"lease": first["lease"], "result": "late"})
    assert status == 409 and "attempt 2" in body["error"], body
    assert api("POST", f"/tasks/{tid}/heartbeat", {"lease": first["lease"]})[0] == 409
    assert api("POST", f"/tasks/{tid}/complete", {"lease": second["lease"], "result": "fresh"}) == \
        (200, {"ok": True, "task_id": tid, "duplicate": False})
    assert api("POST", f"/tasks/{tid}/complete", {"lease": second["lease"], "result": "fresh"})[1]["duplicate"]
    assert api("POST", f"/tasks/{tid}/complete", {"lease": first["lease"], "result": "late"})[0] == 409
    assert api("POST", f"/tasks/{tid}/complete", {"lease": second["lease"], "result": "other"})[1]["duplicate"]
    assert api("GET", f"/runs/{rid}/result?wait=10")[1]["result"] == "fresh"
    assert sql(tk, "SELECT status, result FROM tasks WHERE task_id = ?", [tid]) == [["completed", '"fresh"']]
    assert sql(tk, "SELECT count(*) FROM events WHERE kind = 'task_completed' AND payload->>'task_id' = ?",
               [tid]) == [[1]]
    assert api("POST", "/tasks/nope/complete", {"lease": "x"})[0] == 404
    assert api("POST", f"/tasks/{tid}/complete", {"lease": "x"}, token=False)[0] == 401
    t0 = time.monotonic()
    assert api("POST", "/queues/empty/claim", {"worker": "w", "wait": 0.5})[0] == 204
    assert time.monotonic() - t0 >= 0.45


def test_failures_retryable_offered_again_else_the_run_fails(tasks_defined: Kernel) -> None:
    tk = tasks_defined
    api = tk.api  # type: ignore[attr-defined]
    rid = api("POST", "/flows/one/runs", {"args": ["flaky"], "kwargs": {"retries": 1}})[1]["run_id"]
    t = api("POST", "/queues/flaky/claim", {"worker": "w", "wait": 10})[1]
    assert api("POST", f"/tasks/{t['task_id']}/fail", {"lease": t["lease"], "error": "disk full",
                                                       "retryable": True})[1]["status"] == "queued"
    t2 = api("POST", "/queues/flaky/claim", {"worker": "w", "wait": 10})[1]
    assert t2["attempt"] == 2
    assert api("POST", f"/tasks/{t2['task_id']}/fail", {"lease": t2["lease"], "error": "still full",
                                                        "retryable": True})[1]["status"] == "failed"
    info = api("GET", f"/runs/{rid}/result?wait=10")[1]
    assert info["status"] == "failed" and info["error"]["type"].endswith("TaskFailed"), info
    assert "still full" in info["error"]["message"] and "attempt 2" in info["error"]["message"]
    rid = api("POST", "/flows/one/runs", {"args": ["fatal"], "kwargs": {"retries": 5}})[1]["run_id"]
    t = api("POST", "/queues/fatal/claim", {"worker": "w", "wait": 10})[1]
    assert api("POST", f"/tasks/{t['task_id']}/fail", {"lease": t["lease"], "error": "bad input",
                                                       "retryable": False})[1]["status"] == "failed"
    assert api("GET", f"/runs/{rid}/result?wait=10")[1]["status"] == "failed"
    ename = tk.execute("fm.task('q', {'x': 1})").content.get("ename")
    assert ename == "FlowError"
    ename = tk.execute("@fm.flow\ndef badp():\n    return fm.task('q', object())\nbadp()").content.get("ename")
    assert ename == "UsageError"


def test_kernel_killed_between_claim_and_complete(tmp_path: Path) -> None:
    history = tmp_path / "h" / "history.duckdb"
    env = {"FM_HISTORY": str(history)}
    k = Kernel(env=env)
    try:
        check(k, SETUP + TASK_FLOWS)
        info = json.loads(Path(str(history) + ".endpoint.json").read_text())
        api = Api(info["url"], info["token"])
        rid = api("POST", "/flows/one/runs", {"args": ["q"], "kwargs": {"heartbeat": 60}})[1]["run_id"]
        t = api("POST", "/queues/q/claim", {"worker": "w", "wait": 10})[1]
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    with Kernel(env=env) as k2:
        check(k2, "1")
        wait_until(lambda: json.loads(Path(str(history) + ".endpoint.json").read_text())["pid"] != info["pid"],
                   what="the new kernel's endpoint")
        info2 = json.loads(Path(str(history) + ".endpoint.json").read_text())
        assert info2["url"] == info["url"]
        api = Api(info["url"], info2["token"])
        assert api("POST", f"/tasks/{t['task_id']}/complete", {"lease": t["lease"], "result": [1, 2]})[0] == 200
        status, body = api("GET", f"/runs/{rid}/result?wait=30")
        assert status == 200 and body["result"] == [1, 2], body
        assert api("POST", "/queues/q/claim", {"worker": "w", "wait": 0})[0] == 204  # nothing offered twice


def test_async_flow_awaits_a_task_and_a_cancelled_run_cancels_its_task(tasks_defined: Kernel) -> None:
    tk = tasks_defined
    api = tk.api  # type: ignore[attr-defined]
    check(tk, "@fm.flow\nasync def atask(x):\n    return (await fm.task('aq', {'x': x}))['y'] + 1")
    rid = api("POST", "/flows/atask/runs", {"args": [1]})[1]["run_id"]
    t = api("POST", "/queues/aq/claim", {"worker": "w", "wait": 10})[1]
    assert t["payload"] == {"x": 1}
    assert api("POST", f"/tasks/{t['task_id']}/complete", {"lease": t["lease"], "result": {"y": 41}})[0] == 200
    assert api("GET", f"/runs/{rid}/result?wait=10")[1]["result"] == 42
    rid = api("POST", "/flows/one/runs", {"args": ["doomed"]})[1]["run_id"]
    t = api("POST", "/queues/doomed/claim", {"worker": "w", "wait": 10})[1]
    assert api("POST", f"/runs/{rid}/cancel")[0] == 200
    wait_until(lambda: api("GET", f"/tasks/{t['task_id']}")[1]["status"] == "cancelled",
               what="the run's task to be cancelled")
    status, body = api("POST", f"/tasks/{t['task_id']}/complete", {"lease": t["lease"], "result": 1})
    assert status == 409 and "cancelled" in body["error"], body
