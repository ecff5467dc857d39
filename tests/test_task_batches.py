"""External tasks at volume, over real HTTP against a real kernel: a claim
of several tasks at once (``max_tasks``), runs waiting for their tasks
holding no thread, a lease that runs out with nobody claiming (the board's
own timer fails the task, not a thread per waiting run), and kill -9 right
after many completions were acknowledged: none lost, none recorded twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_driver import Kernel, wait_until
from test_tasks import Api

FLOWS = r'''
import fm_kernel.flows as fm

@fm.flow
def one(queue, i=0, heartbeat=None, retries=0):
    return fm.task(queue, {"i": i}, heartbeat=heartbeat, retries=retries)
'''


def check(k: Kernel, code: str) -> str:
    r = k.execute(code, timeout=120)
    assert r.status == "ok", (code, r.content.get("evalue"), "\n".join(r.content.get("traceback") or []))
    return r.text()


def api_of(history: Path) -> Api:
    info = json.loads(Path(str(history) + ".endpoint.json").read_text())
    return Api(info["url"], info["token"])


def sql(api: Api, q: str, params: list | None = None) -> list[list]:
    status, body = api("POST", "/sql", {"query": q, "params": params or []})
    assert status == 200, body
    return body["rows"]


def start(api: Api, queue: str, n: int, **kwargs: object) -> list[str]:
    return [api("POST", "/flows/one/runs", {"args": [queue, i], "kwargs": kwargs})[1]["run_id"]
            for i in range(n)]


def queued(api: Api, queue: str) -> int:
    return sql(api, "SELECT count(*) FROM tasks WHERE queue = ? AND status = 'queued'", [queue])[0][0]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    history = tmp_path_factory.mktemp("batches") / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, FLOWS)
        k.api = api_of(history)  # type: ignore[attr-defined]
        yield k


def test_a_claim_takes_up_to_max_tasks_each_offered_once(kernel: Kernel) -> None:
    api = kernel.api  # type: ignore[attr-defined]
    runs = start(api, "batch", 5)
    wait_until(lambda: queued(api, "batch") == 5, what="five queued tasks")
    status, first = api("POST", "/queues/batch/claim", {"worker": "w", "wait": 5, "max_tasks": 3})
    assert status == 200 and len(first["tasks"]) == 3, first
    status, second = api("POST", "/queues/batch/claim", {"worker": "w", "wait": 5, "max_tasks": 3})
    assert status == 200 and len(second["tasks"]) == 2, second
    assert api("POST", "/queues/batch/claim", {"worker": "w", "wait": 0, "max_tasks": 3})[0] == 204
    got = first["tasks"] + second["tasks"]
    assert sorted(t["run_id"] for t in got) == sorted(runs)
    assert sorted(t["payload"]["i"] for t in got) == [0, 1, 2, 3, 4]
    assert all(t["attempt"] == 1 and t["lease"] for t in got)
    for t in got:
        assert api("POST", f"/tasks/{t['task_id']}/complete",
                   {"lease": t["lease"], "result": t["payload"]["i"] * 10})[0] == 200
    results = sorted(api("GET", f"/runs/{r}/result?wait=30")[1]["result"] for r in runs)
    assert results == [0, 10, 20, 30, 40]
    for bad in (0, -1, 1.5, True, "3", 1001):
        status, body = api("POST", "/queues/batch/claim", {"worker": "w", "wait": 0, "max_tasks": bad})
        assert status == 400 and "max_tasks" in body["error"], (bad, body)


def test_completions_in_one_request_each_answered_as_alone(kernel: Kernel) -> None:
    api = kernel.api  # type: ignore[attr-defined]
    runs = start(api, "many-done", 3)
    wait_until(lambda: queued(api, "many-done") == 3, what="three queued tasks")
    a, b, c = api("POST", "/queues/many-done/claim", {"worker": "w", "wait": 5, "max_tasks": 3})[1]["tasks"]
    status, body = api("POST", "/tasks/complete", {"tasks": [
        {"task_id": a["task_id"], "lease": a["lease"], "result": "a"},
        {"task_id": a["task_id"], "lease": a["lease"], "result": "a again"},  # a repeat: no change
        {"task_id": b["task_id"], "lease": "not-its-lease", "result": "b?"},
        {"task_id": "no-such-task", "lease": "x"},
        {"task_id": c["task_id"], "lease": c["lease"], "result": "c"}]})
    assert status == 200, body
    assert [(o["status"], o.get("duplicate")) for o in body["tasks"]] == \
        [(200, False), (200, True), (409, None), (404, None), (200, False)], body
    assert "no longer the task's" in body["tasks"][2]["error"]
    status, body = api("POST", "/tasks/complete", {"tasks": [
        {"task_id": b["task_id"], "lease": b["lease"], "result": "b"},
        {"task_id": a["task_id"], "lease": a["lease"], "result": "a"}]})
    assert [(o["status"], o.get("duplicate")) for o in body["tasks"]] == [(200, False), (200, True)]
    results = {api("GET", f"/runs/{r}/result?wait=30")[1]["result"] for r in runs}
    assert results == {"a", "b", "c"}
    assert sql(api, "SELECT count(*) FROM events WHERE kind = 'task_completed' AND run_id IN (?, ?, ?)",
               runs) == [[3]]
    for bad in ({}, {"tasks": []}, {"tasks": [{"lease": "x"}]}, {"tasks": "all"}):
        status, body = api("POST", "/tasks/complete", bad)
        assert status == 400 and "tasks" in body["error"], (bad, body)


def test_runs_waiting_for_tasks_hold_no_thread(kernel: Kernel) -> None:
    api = kernel.api  # type: ignore[attr-defined]
    runs = start(api, "idle", 300)
    wait_until(lambda: queued(api, "idle") == 300, what="300 queued tasks", timeout=60)
    # a few (tasks.py: HOLD_MOST) may hold their thread for a second, then park too;
    # Python's threads, not the process's (DuckDB keeps native ones of its own)
    def threads() -> int:
        return int(check(kernel, "import threading; print(threading.active_count())").split()[-1])
    try:
        wait_until(lambda: threads() < 40, what="the waiting runs to park", timeout=15, poll=0.5)
    except AssertionError:
        raise AssertionError(f"{threads()} threads in the kernel for 300 runs waiting on tasks") from None
    done = 0
    while done < 300:
        status, body = api("POST", "/queues/idle/claim", {"worker": "w", "wait": 5, "max_tasks": 64})
        assert status == 200, (status, body)
        for t in body["tasks"]:
            assert api("POST", f"/tasks/{t['task_id']}/complete",
                       {"lease": t["lease"], "result": t["payload"]["i"]})[0] == 200
        done += len(body["tasks"])
    assert sorted(api("GET", f"/runs/{r}/result?wait=30")[1]["result"] for r in runs) == list(range(300))


def test_a_lease_running_out_with_nobody_claiming_fails_the_run(kernel: Kernel) -> None:
    api = kernel.api  # type: ignore[attr-defined]
    rid, = start(api, "lapse", 1, heartbeat=1)
    status, t = api("POST", "/queues/lapse/claim", {"worker": "gone", "wait": 10})
    assert status == 200, t
    # nobody heartbeats or claims again: the expiry alone must end the run
    status, body = api("GET", f"/runs/{rid}/result?wait=20")
    assert status == 200 and body["status"] == "failed", body
    assert "lease of attempt 1" in body["error"]["message"], body
    assert api("POST", f"/tasks/{t['task_id']}/complete", {"lease": t["lease"], "result": 1})[0] == 409


def test_kill9_after_many_acknowledged_completions_none_lost_none_twice(tmp_path: Path) -> None:
    history = tmp_path / "h" / "history.duckdb"
    env = {"FM_HISTORY": str(history)}
    n = 200
    k = Kernel(env=env)
    try:
        check(k, FLOWS)
        api = api_of(history)
        runs = start(api, "many", n)
        leases = {}
        while len(leases) < n:
            status, body = api("POST", "/queues/many/claim", {"worker": "w", "wait": 10, "max_tasks": 50})
            assert status == 200, (status, body)
            for t in body["tasks"]:
                assert api("POST", f"/tasks/{t['task_id']}/complete",
                           {"lease": t["lease"], "result": {"i": t["payload"]["i"]}})[0] == 200
                leases[t["task_id"]] = t["lease"]
        k.kill9()  # at once after the last acknowledgement
    finally:
        if k.km.is_alive():
            k.shutdown()
    with Kernel(env=env) as k2:
        check(k2, FLOWS)
        api = api_of(history)
        results = [api("GET", f"/runs/{r}/result?wait=60")[1] for r in runs]
        assert [b["status"] for b in results] == ["succeeded"] * n, results
        assert sorted(b["result"]["i"] for b in results) == list(range(n))
        assert sql(api, "SELECT count(*), count(DISTINCT payload->>'task_id') FROM events"
                        " WHERE kind = 'task_completed'") == [[n, n]]
        assert sql(api, "SELECT count(*) FROM events WHERE kind = 'task_claimed'") == [[n]]
        assert sql(api, "SELECT count(*) FROM run_steps WHERE name = 'fm.task(many)'"
                        " AND status = 'ok'") == [[n]]
        assert api("POST", "/queues/many/claim", {"worker": "w", "wait": 0})[0] == 204
        tid, lease = next(iter(leases.items()))
        assert api("POST", f"/tasks/{tid}/complete", {"lease": lease, "result": {"i": -1}})[1]["duplicate"]


def test_with_fsync_on_the_routes_answer_the_same(tmp_path: Path) -> None:
    # FM_FSYNC=1: each record is fdatasync-ed, so the routes work on a thread, not the loop
    history = tmp_path / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history), "FM_FSYNC": "1"}) as k:
        check(k, FLOWS)
        api = api_of(history)
        runs = start(api, "synced", 3)
        status, body = api("POST", "/queues/synced/claim", {"worker": "w", "wait": 10, "max_tasks": 3})
        assert status == 200, body
        got = body["tasks"]
        while len(got) < 3:  # the runs queue their tasks as they start
            got += api("POST", "/queues/synced/claim", {"worker": "w", "wait": 10, "max_tasks": 3})[1]["tasks"]
        assert api("POST", f"/tasks/{got[0]['task_id']}/complete",
                   {"lease": got[0]["lease"], "result": "alone"})[0] == 200
        status, body = api("POST", "/tasks/complete", {"tasks": [
            {"task_id": t["task_id"], "lease": t["lease"], "result": "together"} for t in got[1:]]})
        assert [o["status"] for o in body["tasks"]] == [200, 200], body
        assert api("POST", f"/tasks/{got[0]['task_id']}/complete", {"lease": "stale"})[0] == 409
        assert sorted(api("GET", f"/runs/{r}/result?wait=30")[1]["result"] for r in runs) == \
            ["alone", "together", "together"]


def test_a_run_past_its_deadline_cancels_its_task(kernel: Kernel) -> None:
    api = kernel.api  # type: ignore[attr-defined]
    check(kernel, '@fm.flow(timeout=1.5)\ndef hurried():\n    return fm.task("late", {"x": 1})')
    rid = api("POST", "/flows/hurried/runs", {})[1]["run_id"]
    status, body = api("GET", f"/runs/{rid}/result?wait=20")
    assert status == 200 and body["status"] == "cancelled", body
    wait_until(lambda: sql(api, "SELECT status FROM tasks WHERE run_id = ?", [rid]) == [["cancelled"]],
               what="the run's task to be cancelled at its deadline")
    assert api("POST", "/queues/late/claim", {"worker": "w", "wait": 0})[0] == 204
