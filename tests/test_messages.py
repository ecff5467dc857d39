"""Messages between runs and the events a run publishes (issue 15), through
real kernels: fm.send / fm.recv, fm.set_event / run.get_event, their HTTP
routes, and exactly-once delivery and taking across kill -9 of the sender
and of the receiver."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kernel_driver import FLOW_PRELUDE as PRELUDE
from kernel_driver import (HOLD, MARKS, Kernel, check, endpoint_info, fails, flow_kernel, http_json,
                           lines, query, wait_until)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def http(url: str, token: str | None, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if method == "POST" else None
    return http_json(url + path, method, data, token, headers)


@pytest.fixture(scope="module")
def mk(tmp_path_factory):
    base = tmp_path_factory.mktemp("messages")
    path = base / "history.duckdb"
    with flow_kernel(path) as k:
        yield k


def rows(k: Kernel, sql: str, *params: str) -> list[list[Any]]:
    out = check(k, "flows.registry().journal.flush()\nprint(json.dumps(flows.registry().journal"
                   f".store.query({sql!r}, {list(params)!r}).rows, default=str))")
    return json.loads(out.strip().splitlines()[-1])


def run_id(k: Kernel, var: str) -> str:
    return check(k, f"print({var}.id)").strip()


# -- messages --------------------------------------------------------------------------------

def test_messages_sent_before_the_receiver_waits_are_kept_and_taken_in_order(mk: Kernel) -> None:
    out = check(mk, """
@fm.flow
def inbox1():
    fm.wait_for("go", timeout=60)   # the messages come while the run waits for something else
    return [fm.recv("job", timeout=30), fm.recv("job", timeout=30)]
r1 = inbox1.start()
fm.send(r1.id, "job", {"n": 1})
fm.send(r1.id, "job", (2, "a tuple"))   # not JSON: pickled, and a tuple again when taken
r1.signal("go")
print(repr(r1.result(30)))
""")
    assert out.strip().splitlines()[-1] == "[{'n': 1}, (2, 'a tuple')]", out
    rid = run_id(mk, "r1")
    sent = rows(mk, "SELECT seq FROM events WHERE kind = 'message' AND run_id = ? ORDER BY seq", rid)
    taken = rows(mk, "SELECT CAST(detail->>'event_seq' AS BIGINT) FROM run_steps WHERE run_id = ?"
                     " AND name = 'fm.recv(job)' AND status = 'ok' ORDER BY position", rid)
    assert taken == sent and len(sent) == 2, (sent, taken)


def test_recv_timeout_raises_fm_timeout_and_recv_outside_a_flow_is_refused(mk: Kernel) -> None:
    out = check(mk, """
@fm.flow
def impatient():
    try:
        fm.recv("never", timeout=0.5)
    except fm.Timeout as exc:
        return "caught: " + str(exc)
@fm.flow
def uncaught():
    return fm.recv("never", timeout=0.5)
it = impatient.start(); print(it.result(30))
un = uncaught.start()
""")
    assert "caught: run " in out and "a message on topic 'never'" in out, out
    ename, evalue = fails(mk, "un.result(30)")
    assert ename == "Timeout" and "waited 0.5s" in evalue, evalue
    got = rows(mk, "SELECT status, detail->>'deadline' IS NOT NULL, error->>'type' FROM run_steps"
                   " WHERE run_id = ? ORDER BY attempt", run_id(mk, "un"))
    assert got == [["waiting", True, None], ["failed", False, "fm_kernel.errors.Timeout"]], got
    ename, evalue = fails(mk, "fm.recv('job')")
    assert ename == "UsageError" and "flow body only" in evalue and "fm.send" in evalue, evalue
    ename, evalue = fails(mk, "fm.set_event('stage', 1)")
    assert ename == "UsageError" and "flow body only" in evalue, evalue


def test_http_messages_refuse_finished_and_unknown_runs(mk: Kernel) -> None:
    url, token = mk.url, mk.token  # type: ignore[attr-defined]
    check(mk, "@fm.flow\ndef over():\n    return 1\nov = over.start(); ov.result(10)")
    rid = run_id(mk, "ov")
    code, body = http(url, token, "POST", f"/runs/{rid}/messages/job", {"n": 1})
    assert code == 409 and "finished (succeeded)" in body["error"], (code, body)
    code, body = http(url, token, "POST", "/runs/" + "0" * 32 + "/messages/job", {"n": 1})
    assert code == 404 and "no flow run" in body["error"], (code, body)
    code, _ = http(url, None, "POST", f"/runs/{rid}/messages/job", {"n": 1})
    assert code == 401
    code, body = http(url, token, "POST", f"/runs/{rid}/messages/bad%20topic", {"n": 1})
    assert code == 400 and "topic name" in body["error"], (code, body)
    assert rows(mk, "SELECT count(*) FROM events WHERE kind = 'message' AND run_id = ?", rid) == [[0]]
    ename, evalue = fails(mk, "fm.send(ov.id, 'job', 1)")
    assert ename == "RunFinished", evalue


# -- events ----------------------------------------------------------------------------------

def test_set_event_and_get_event_from_a_cell_and_over_http(mk: Kernel) -> None:
    url, token = mk.url, mk.token  # type: ignore[attr-defined]
    out = check(mk, """
@fm.flow
def stages():
    fm.set_event("stage", "one")
    fm.wait_for("next", timeout=60)
    fm.set_event("stage", {"n": 2})
    fm.set_event("late", True)
    fm.wait_for("end", timeout=60)
    return "done"
st = stages.start()
print(json.dumps(st.get_event("stage", timeout=10)))
""")
    assert out.strip().splitlines()[-1] == '"one"', out
    rid = run_id(mk, "st")
    code, body = http(url, token, "GET", f"/runs/{rid}/events/stage")
    assert (code, body["set"], body["value"]) == (200, True, "one"), body
    code, body = http(url, token, "GET", f"/runs/{rid}/events/missing?timeout=0.3")
    assert (code, body["set"], body["status"]) == (202, False, "waiting"), (code, body)
    ename, evalue = fails(mk, "st.get_event('missing', timeout=0.3)")
    assert ename == "Timeout" and "has not set event 'missing'" in evalue, evalue

    polled: dict[str, Any] = {}

    def long_poll() -> None:
        t0 = time.monotonic()
        polled["answer"] = http(url, token, "GET", f"/runs/{rid}/events/late?timeout=30")
        polled["took"] = time.monotonic() - t0

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)
    check(mk, "st.signal('next')")
    poller.join(40)
    assert polled["answer"][0] == 200 and polled["answer"][1]["value"] is True, polled
    assert polled["took"] < 5, f"the long poll answered {polled['took']:.1f}s after the event was set"
    out = check(mk, "print(json.dumps(st.get_event('stage')))\nst.signal('end'); st.result(10)")
    assert out.strip().splitlines()[-1] == '{"n": 2}', out

    code, body = http(url, token, "GET", f"/runs/{rid}/events/stage")
    assert (code, body["value"], body["status"]) == (200, {"n": 2}, "succeeded"), body
    code, body = http(url, token, "GET", f"/runs/{rid}/events/missing?timeout=30")
    assert code == 404 and "without setting event 'missing'" in body["error"], (code, body)
    t0 = time.monotonic()
    ename, evalue = fails(mk, "st.get_event('missing', timeout=30)")
    assert ename == "Timeout" and "it never will" in evalue and time.monotonic() - t0 < 10, evalue
    code, _ = http(url, token, "GET", "/runs/" + "0" * 32 + "/events/stage")
    assert code == 404


def test_get_event_inside_a_flow_is_journaled(mk: Kernel) -> None:
    out = check(mk, """
@fm.flow
def publisher():
    fm.set_event("ready", {"port": 8080})
    fm.wait_for("end", timeout=60)
@fm.flow
def watcher(pid):
    got = fm.get_run(pid).get_event("ready", timeout=30)
    try:
        fm.get_run(pid).get_event("never", timeout=0.2)
    except fm.Timeout:
        return got
pub = publisher.start(); wat = watcher.start(pub.id)
print(json.dumps(wat.result(30))); pub.signal("end"); pub.result(10)
""")
    assert out.strip().splitlines()[-1] == '{"port": 8080}', out
    got = rows(mk, "SELECT name, status, result FROM run_steps WHERE run_id = ? ORDER BY position,"
                   " attempt", run_id(mk, "wat"))
    assert got == [["fm.get_event(ready)", "waiting", None],
                   ["fm.get_event(ready)", "ok", '{"port": 8080}'],
                   ["fm.get_event(never)", "waiting", None],
                   ["fm.get_event(never)", "failed", None]], got


def test_the_docs_sample_runs_as_written(mk: Kernel) -> None:
    text = (DOCS / "flows.md").read_text()
    section = text[text.index("## Messages and events between runs"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    out = check(mk, code).strip().splitlines()
    expected = re.findall(r"^print\(.*?# (.*)$", code, re.M)
    assert out[-3:] == expected and len(expected) == 3, (out, expected)


# -- across kill -9 ----------------------------------------------------------------------------

FLOWS = MARKS + HOLD + r'''
@fm.flow
def receiver():
    first = fm.recv("ping", timeout=120)
    fm.wait_for("end", timeout=120)
    return first

@fm.flow
def sender(target_id):
    fm.send(target_id, "ping", {{"n": 1}})
    hold("sender.holding")
    return "sent"

def wait_file(name):
    while not os.path.exists(os.path.join(D, name)):
        time.sleep(0.02)

@fm.flow
def sender2(target_id):
    wait_file("fire")
    fm.send(target_id, "ping", {{"n": 2}})
    return "sent"

@fm.flow
def inbox():
    a = fm.recv("job", timeout=300)
    hold("inbox.got")
    b = fm.recv("job", timeout=300)
    return [a, b]
'''


def start_kernel(tmp_path: Path) -> tuple[Kernel, dict[str, str], Path]:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    d = tmp_path / "marks"
    d.mkdir(exist_ok=True)
    k = Kernel(env=env)
    check(k, PRELUDE + FLOWS.format(d=str(d)))
    return k, env, d


def kill9(k: Kernel) -> None:
    if k.km.is_alive():
        k.kill9()


def test_a_message_sent_from_a_flow_arrives_once_across_kill9_of_the_sender(tmp_path: Path) -> None:
    k, env, d = start_kernel(tmp_path)
    try:
        ids = json.loads(check(k, "r = receiver.start(); s = sender.start(r.id)\n"
                                  "print(json.dumps({'r': r.id, 's': s.id}))").strip())
        wait_until(lambda: lines(d / "sender.holding"), what="the sender past its send")
        time.sleep(0.3)
    finally:
        kill9(k)
    (d / "go").touch()
    with Kernel(env=env) as k2:
        out = check(k2, "import fm_kernel as fm, json\n"
                        f"assert fm.get_run({ids['s']!r}).result(60) == 'sent'\n"
                        f"fm.get_run({ids['r']!r}).signal('end')\n"
                        f"print(json.dumps(fm.get_run({ids['r']!r}).result(60)))", timeout=90)
    assert out.strip().splitlines()[-1] == '{"n": 1}', out
    h = tmp_path / "history.duckdb"
    sent = query(h, "SELECT payload->>'key', payload->>'from_run' FROM events WHERE kind = 'message'"
                    " AND run_id = ?", [ids["r"]])
    assert sent == [(f"{ids['s']}:1", ids["s"])], f"the receiver was sent {len(sent)} messages: {sent}"
    steps = query(h, "SELECT position, status FROM run_steps WHERE run_id = ? AND name = 'fm.send(ping)'",
                  [ids["s"]])
    assert steps == [(1, "ok")], steps


def test_a_kill_between_storing_a_message_and_journaling_the_send_stores_it_once(
        tmp_path: Path) -> None:
    """The narrowest window: the process dies after the message is committed
    and before the send's position is journaled (a kill -9 from inside
    RunContext.record). The replay sends again; the key refuses a copy."""
    k, env, d = start_kernel(tmp_path)
    try:
        ids = json.loads(check(k, """
import fm_kernel.flows.context as _ctx_mod
_record = _ctx_mod.RunContext.record
def _dies_before_journaling_a_send(self, p, name, *a, **kw):
    if name.startswith("fm.send("):
        os.kill(os.getpid(), 9)
    return _record(self, p, name, *a, **kw)
_ctx_mod.RunContext.record = _dies_before_journaling_a_send
r = receiver.start(); s = sender2.start(r.id)
print(json.dumps({'r': r.id, 's': s.id}))""").strip().splitlines()[-1])
        (d / "fire").touch()
        wait_until(lambda: not k.km.is_alive(), what="the kernel killed inside the send")
    finally:
        if k.km.is_alive():
            k.kill9()
        else:
            k.kc.stop_channels()
            k.km.cleanup_resources()
    h = tmp_path / "history.duckdb"
    with Kernel(env=env) as k2:
        out = check(k2, "import fm_kernel as fm, json\n"
                        f"assert fm.get_run({ids['s']!r}).result(60) == 'sent'\n"
                        f"fm.get_run({ids['r']!r}).signal('end')\n"
                        f"print(json.dumps(fm.get_run({ids['r']!r}).result(60)))", timeout=90)
    assert out.strip().splitlines()[-1] == '{"n": 2}', out
    sent = query(h, "SELECT payload->>'key' FROM events WHERE kind = 'message' AND run_id = ?",
                 [ids["r"]])
    assert sent == [(f"{ids['s']}:1",)], f"the receiver was sent {len(sent)} messages: {sent}"
    steps = query(h, "SELECT status, result->>'seq' FROM run_steps WHERE run_id = ?"
                     " AND name = 'fm.send(ping)'", [ids["s"]])
    assert len(steps) == 1 and steps[0][0] == "ok", steps


def test_a_receiver_killed_while_waiting_takes_each_message_once(tmp_path: Path) -> None:
    """Kill -9 while the receiver waits in recv (nothing sent yet); the next
    kernel resumes the wait and two messages come over HTTP; kill -9 again
    after the first recv was journaled; the third kernel's replay returns
    that same first message and takes the second at the next recv."""
    h = tmp_path / "history.duckdb"
    k, env, d = start_kernel(tmp_path)
    try:
        rid = check(k, "ib = inbox.start(); print(ib.id)").strip()
        wait_until(lambda: check(k, "print(ib.status)").strip() == "waiting", what="inbox waiting")
    finally:
        kill9(k)
    k2 = Kernel(env=env)
    try:
        check(k2, "import fm_kernel as fm")
        info = endpoint_info(h)
        url, token = info["url"], info["token"]
        key = {"Idempotency-Key": "order-1"}
        first = http(url, token, "POST", f"/runs/{rid}/messages/job", {"n": 1}, key)
        again = http(url, token, "POST", f"/runs/{rid}/messages/job", {"n": 1}, key)
        assert first[0] == again[0] == 200 and first[1]["seq"] == again[1]["seq"], (first, again)
        assert (first[1]["duplicate"], again[1]["duplicate"]) == (False, True)
        assert http(url, token, "POST", f"/runs/{rid}/messages/job", {"n": 2})[0] == 200
        wait_until(lambda: lines(d / "inbox.got"), what="the first recv taken")
        time.sleep(0.3)
    finally:
        kill9(k2)
    (d / "go").touch()
    with Kernel(env=env) as k3:
        out = check(k3, f"import fm_kernel as fm, json\nprint(json.dumps(fm.get_run({rid!r}).result(60)))",
                    timeout=90)
    assert out.strip().splitlines()[-1] == '[{"n": 1}, {"n": 2}]', out
    sent = query(h, "SELECT seq FROM events WHERE kind = 'message' AND run_id = ? ORDER BY seq", [rid])
    taken = query(h, "SELECT CAST(detail->>'event_seq' AS BIGINT) FROM run_steps WHERE run_id = ?"
                     " AND name = 'fm.recv(job)' AND status = 'ok' ORDER BY position", [rid])
    assert len(sent) == 2 and taken == sent, (sent, taken)
    deadlines = query(h, "SELECT DISTINCT detail->>'deadline' FROM run_steps WHERE run_id = ?"
                         " AND position = 1 AND status = 'waiting'", [rid])
    assert len(deadlines) == 1, f"the resumed wait journaled a new deadline: {deadlines}"
