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

from kernel_driver import Kernel, query, wait_until

WORKERS = Path(__file__).resolve().parent / "workers"

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
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, SETUP)
        info = json.loads(Path(str(path) + ".endpoint.json").read_text())
        k.api, k.path = Api(info["url"], info["token"]), path  # type: ignore[attr-defined]
        k.info = info  # type: ignore[attr-defined]
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
