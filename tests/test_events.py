"""Named events over real HTTP: signed webhooks (GitHub's X-Hub-Signature-256),
redelivery by delivery id, @fm.flow(on=...) and fm.wait_event."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from kernel_driver import Kernel, check, wait_until
from test_tasks import Api

SETUP = r'''
import fm_kernel.flows as fm
fm.event_source("push", secret="s3cret")

@fm.flow(on="push")
def on_push(payload):
    return {"ref": payload["ref"]}

@fm.flow
def waiter():
    return fm.wait_event("order", match={"id": 7}, timeout=60)
'''


def sign(body: bytes, secret: str = "s3cret") -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signed_webhook_starts_one_run_and_redelivery_nothing_new(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, SETUP)
        info = json.loads(Path(str(path) + ".endpoint.json").read_text())
        api = Api(info["url"], info["token"])
        body = {"ref": "refs/heads/main"}
        raw = json.dumps(body).encode()
        hdr = {"X-Hub-Signature-256": sign(raw), "X-GitHub-Delivery": "d-1",
               "Content-Type": "application/json"}
        status, got = api("POST", "/events/push", body, token=False, headers=hdr)
        assert status == 201 and not got["duplicate"] and len(got["runs"]) == 1, got
        status, again = api("POST", "/events/push", body, token=False, headers=hdr)
        assert status == 200 and again["duplicate"] and again["runs"] == got["runs"], again
        assert api("POST", "/events/push", body, token=False,
                   headers={**hdr, "X-Hub-Signature-256": sign(raw, "wrong")})[0] == 401
        status, err = api("POST", "/events/push", body, token=False, headers={"X-GitHub-Delivery": "d-2"})
        assert status == 401 and "X-Hub-Signature-256" in err["error"], err
        rid = got["runs"][0]
        status, res = api("GET", f"/runs/{rid}/result?wait=20")
        assert status == 200 and res["result"] == {"ref": "refs/heads/main"}, res
        n = api("POST", "/sql", {"query": "SELECT count(*) FROM runs WHERE flow = 'on_push'"})[1]
        assert n["rows"] == [[1]], n
        # wait_event: a non-matching event is skipped, the matching one delivered
        wid = api("POST", "/flows/waiter/runs", {})[1]["run_id"]
        assert api("POST", "/events/order", {"id": 1})[0] == 201
        assert api("POST", "/events/order", {"id": 7, "x": "y"})[0] == 201
        status, res = api("GET", f"/runs/{wid}/result?wait=20")
        assert status == 200 and res["result"] == {"id": 7, "x": "y"}, res
        # the endpoint describes itself, without a token
        status, doc = api("GET", "/openapi.json", token=False)
        assert status == 200 and doc["servers"][0]["url"] == info["url"], doc
        assert "post" in doc["paths"]["/events/{name}"] and "/openapi.json" in doc["paths"], doc
        rows = api("POST", "/sql", {"query": "SELECT kind, payload->>'name', payload->>'delivery_id'"
                                    " FROM events WHERE kind = 'event_received' ORDER BY seq"})[1]["rows"]
        assert [r[1] for r in rows] == ["push", "order", "order"] and rows[0][2] == "d-1", rows


TWO = r'''
import fm_kernel.flows as fm

@fm.flow
def two():
    return [fm.wait_event("tick"), fm.wait_event("tick")]
'''


def _api(path: Path) -> Api:
    info = json.loads(Path(str(path) + ".endpoint.json").read_text())
    return Api(info["url"], info["token"])


def test_wait_event_across_kill9_takes_each_event_once(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, TWO)
        api = _api(path)
        rid = api("POST", "/flows/two/runs", {"run_id": "two-1"})[1]["run_id"]
        assert api("POST", "/events/tick", {"n": 1}, headers={"X-Delivery-Id": "t1"})[0] == 201

        def first_taken() -> bool:
            rows = api("POST", "/sql", {"query": "SELECT count(*) FROM run_steps WHERE run_id = ?"
                                        " AND position = 1 AND status = 'ok'", "params": [rid]})[1]
            return rows["rows"] == [[1]]
        wait_until(first_taken, 20, "the first wait took the event")
        k.kill9()
    with Kernel(env={"FM_HISTORY": str(path)}) as k2:
        check(k2, TWO)  # defining the flow resumes the run
        api = _api(path)
        assert api("POST", "/events/tick", {"n": 1}, headers={"X-Delivery-Id": "t1"})[1]["duplicate"]
        assert api("POST", "/events/tick", {"n": 2}, headers={"X-Delivery-Id": "t2"})[0] == 201
        status, res = api("GET", f"/runs/{rid}/result?wait=30")
        assert status == 200 and res["result"] == [{"n": 1}, {"n": 2}], res
