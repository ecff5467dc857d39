"""Flow semantics through real kernels (issue 15): cancel near the end and
after the end, refused step options, clear errors, stored errors without
fm_kernel's frames, one resume line, durable retry backoff across kill -9,
and effects of a flow body (starting a child, sending a signal) journaled so
a replay after kill -9 does not repeat them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kernel_driver import FLOW_PRELUDE as PRELUDE
from kernel_driver import HOLD, MARKS, Kernel, check, fails, flow_kernel, lines, query, wait_until


@pytest.fixture(scope="module")
def fk(tmp_path_factory):
    base = tmp_path_factory.mktemp("effects")
    path = base / "history.duckdb"
    with flow_kernel(path, PRELUDE + f"\nD = {str(base)!r}") as k:
        k.dir = base  # type: ignore[attr-defined]
        yield k


# -- cancel ---------------------------------------------------------------------------------

def test_cancel_during_the_last_step_ends_cancelled(fk: Kernel) -> None:
    check(fk, """
@fm.step
def last_step():
    open(os.path.join(D, "last.started"), "w").close()
    while not os.path.exists(os.path.join(D, "last.go")):
        time.sleep(0.02)
    return 1
@fm.flow
def ends_soon():
    return last_step()
cr = ends_soon.start()
while not os.path.exists(os.path.join(D, "last.started")): time.sleep(0.02)
cr.cancel()
open(os.path.join(D, "last.go"), "w").close()
""")
    ename, _ = fails(fk, "cr.result(10)")
    assert ename == "Cancelled"
    out = check(fk, "print(cr.status, flows.registry().journal.run_row(cr.id)['status'])")
    assert out.split() == ["cancelled", "cancelled"], out
    kinds = query_events(fk, "cr")
    assert "run_cancelled" in kinds and "run_finished" not in kinds, kinds


def query_events(k: Kernel, var: str) -> list[str]:
    out = check(k, f"print(json.dumps([r[0] for r in flows.registry().journal.store.query("
                   f"\"SELECT kind FROM fm_events WHERE run_id = ? ORDER BY seq\", [{var}.id]).rows]))")
    return json.loads(out)


def test_cancel_on_a_finished_run_is_a_no_op_that_says_so(fk: Kernel) -> None:
    check(fk, """
@fm.flow
def quick(x):
    return x + 1
qr = quick.start(1); assert qr.result(10) == 2
before = flows.registry().journal.run_row(qr.id)
live = qr.cancel()
flows.registry().runs.pop(qr.id)        # a handle made from the record, as another kernel has
fresh = fm.get_run(qr.id)
assert fresh is not qr
again = fresh.cancel()
after = flows.registry().journal.run_row(qr.id)
print(json.dumps([live, again, before["status"], after["status"],
                  before["finished_at"] == after["finished_at"], fresh.result(5)]))
""")
    out = check(fk, "print(json.dumps([live, again, before['status'], after['status'],"
                    " before['finished_at'] == after['finished_at'], fresh.result(5)]))")
    assert json.loads(out) == [False, False, "succeeded", "succeeded", True, 2]
    assert "run_cancelled" not in query_events(fk, "qr")


# -- refused options, clear messages ------------------------------------------------------

@pytest.mark.parametrize("opts, word", [("retries=-1", "retries"), ("timeout=0", "timeout"),
                                        ("backoff=-2.0", "backoff"),
                                        ("retry_delay=-1", "retry_delay")])
def test_bad_step_options_are_refused_when_decorating(fk: Kernel, opts: str, word: str) -> None:
    ename, evalue = fails(fk, f"@fm.step({opts})\ndef s():\n    return 1")
    assert ename == "UsageError" and word in evalue and "'s'" in evalue, evalue


def test_unstorable_arguments_are_named_plainly(fk: Kernel) -> None:
    check(fk, "import threading\n@fm.flow\ndef takes(a, b=None):\n    return 1")
    ename, evalue = fails(fk, "takes(1, b=threading.Lock())")
    assert ename == "NotStorable", evalue
    assert "returned" not in evalue and "argument b of flow 'takes'" in evalue, evalue
    assert "lock" in evalue.lower()


def test_a_signal_to_a_finished_run_is_refused(fk: Kernel) -> None:
    check(fk, "@fm.flow\ndef done_flow():\n    return 'ok'\ndr = done_flow.start(); dr.result(10)")
    ename, evalue = fails(fk, "dr.signal('go', 1)")
    assert ename == "RunFinished" and "succeeded" in evalue and "dr" not in ename, evalue
    import urllib.error
    import urllib.request

    rid = check(fk, "print(dr.id)").strip()
    req = urllib.request.Request(f"{fk.url}/runs/{rid}/signals/go", data=b"{}", method="POST")  # type: ignore[attr-defined]
    req.add_header("Authorization", f"token {fk.token}")  # type: ignore[attr-defined]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 409
    n = check(fk, "print(len(flows.registry().journal.signals(dr.id, 'go')))").strip()
    assert n == "0"


def test_stored_errors_hold_no_internal_frames(fk: Kernel) -> None:
    check(fk, """
@fm.step
def explode():
    raise ValueError("user bug here")
@fm.flow
def explodes():
    return explode()
er = explodes.start()
try:
    er.result(10)
except ValueError:
    pass
""")
    out = check(fk, "print(json.dumps([r[0] for r in flows.registry().journal.store.query("
                    "\"SELECT error->>'traceback' FROM runs WHERE run_id = ? UNION ALL "
                    "SELECT error->>'traceback' FROM run_steps WHERE run_id = ?\", [er.id, er.id]).rows]))")
    tracebacks = json.loads(out)
    assert len(tracebacks) == 2
    for tb in tracebacks:
        assert "user bug here" in tb and "explode" in tb, tb
        assert "fm_kernel" not in tb, tb


# -- after kill -9 ---------------------------------------------------------------------------

def test_many_resumed_runs_make_one_short_line(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    with Kernel(env=env) as k:
        check(k, PRELUDE + "\n@fm.flow\ndef napper(i):\n    fm.sleep(2)\n    return i\n"
                 "ids = [napper.start(i).id for i in range(12)]\nprint(json.dumps(ids))")
        ids = json.loads(check(k, "print(json.dumps(ids))"))
        wait_until(lambda: len(query_sleeping(k)) == 12, what="12 runs asleep")
        k.kill9()
    with Kernel(env=env) as k2:
        out = check(k2, "import fm_kernel as fm\nprint(sorted(set(fm.get_run(i).result(60) for i in "
                        f"{ids!r})))", timeout=90)
        line = [x for x in out.splitlines() if "flow run(s)" in x]
        assert line and "resumed 12 flow run(s)" in line[0], out
        assert not any(i[:8] in line[0] for i in ids) and len(line[0]) < 160, line[0]


def query_sleeping(k: Kernel) -> list[str]:
    out = check(k, "print(json.dumps([r[0] for r in flows.registry().journal.store.query("
                   "\"SELECT run_id FROM runs WHERE status = 'sleeping'\").rows]))")
    return json.loads(out)


def test_retry_backoff_survives_kill9(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    marks = tmp_path / "attempts"
    with Kernel(env=env) as k:
        check(k, PRELUDE + f"""
M = {str(marks)!r}
@fm.step(retries=1, retry_delay=8)
def flaky():
    with open(M, "a") as f:
        f.write(f"{{time.time()}}\\n")
    if len(open(M).read().splitlines()) == 1:
        raise ConnectionError("down")
    return "up"
@fm.flow
def patient():
    return flaky()
run_id = patient.start().id
""")
        run_id = check(k, "print(run_id)").strip()
        wait_until(lambda: len(lines(marks)) == 1, what="the first attempt")
        time.sleep(1.0)  # inside the 8 s backoff; its wake time is journaled by now
        k.kill9()
    with Kernel(env=env) as k2:
        out = check(k2, f"import fm_kernel as fm\nprint(fm.get_run({run_id!r}).result(60))", timeout=90)
        assert "up" in out.splitlines(), out
    t1, t2 = (float(x) for x in lines(marks))
    assert t2 - t1 >= 7.5, f"the second attempt came {t2 - t1:.1f}s after the first, not after 8 s"
    rows = query(tmp_path / "history.duckdb", "SELECT status, detail->>'retry_at' FROM run_steps "
                 "WHERE run_id = ? ORDER BY attempt", [run_id])
    assert rows[0][0] == "error" and float(rows[0][1]) >= t1 + 7.5 and rows[-1][0] == "ok", rows


# -- effects of a flow body happen once across kill -9 -------------------------------------

EFFECTS = MARKS + HOLD + r'''
@fm.flow
def child(tag):
    mark("child." + tag)
    return tag.upper()

@fm.flow
def parent():
    c = child.start("x")
    hold("parent.holding")
    return [c.id, c.result(60)]

@fm.flow
def receiver():
    first = fm.wait_for("ping", timeout=120)
    fm.wait_for("end", timeout=120)
    return first

@fm.flow
def sender(target_id):
    fm.get_run(target_id).signal("ping", {{"n": 1}})
    hold("sender.holding")
    return "sent"
'''


def _kill_while_holding(tmp_path: Path, start: str, holding: str) -> tuple[dict[str, str], str]:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    d = tmp_path / "marks"
    d.mkdir()
    with Kernel(env=env) as k:
        check(k, PRELUDE + EFFECTS.format(d=str(d)))
        ids = check(k, start + "\nprint(json.dumps(ids))").strip().splitlines()[-1]
        wait_until(lambda: lines(d / holding), what=holding)
        time.sleep(0.3)
        k.kill9()
    (d / "go").touch()
    return env, ids


def test_a_child_started_in_a_flow_is_started_once_across_kill9(tmp_path: Path) -> None:
    env, ids = _kill_while_holding(tmp_path, "p = parent.start(); ids = {'parent': p.id}",
                                   "parent.holding")
    parent_id = json.loads(ids)["parent"]
    with Kernel(env=env) as k2:
        out = check(k2, f"import fm_kernel as fm, json\nprint(json.dumps(fm.get_run({parent_id!r})"
                        ".result(60)))", timeout=90)
    child_id, value = json.loads([x for x in out.splitlines() if x.startswith("[")][-1])
    assert value == "X"
    assert lines(tmp_path / "marks" / "child.x") == ["x"], "the child ran twice"
    rows = query(tmp_path / "history.duckdb",
                 "SELECT run_id, parent_run, parent_position FROM runs WHERE flow = 'child'")
    assert rows == [(child_id, parent_id, 1)], rows
    steps = query(tmp_path / "history.duckdb", "SELECT name, status, result->>'run_id' FROM "
                  "run_steps WHERE run_id = ? ORDER BY position", [parent_id])
    assert steps == [("fm.start(child)", "ok", child_id)], steps


def test_a_signal_sent_from_a_flow_is_sent_once_across_kill9(tmp_path: Path) -> None:
    env, ids = _kill_while_holding(
        tmp_path, "r = receiver.start(); s = sender.start(r.id); ids = {'r': r.id, 's': s.id}",
        "sender.holding")
    got = json.loads(ids)
    with Kernel(env=env) as k2:
        out = check(k2, "import fm_kernel as fm, fm_kernel.flows as flows, json\n"
                        f"assert fm.get_run({got['s']!r}).result(60) == 'sent'\n"
                        f"print(json.dumps([d for _, d in flows.registry().journal.signals("
                        f"{got['r']!r}, 'ping')]))\n"
                        f"fm.get_run({got['r']!r}).signal('end')\n"
                        f"assert fm.get_run({got['r']!r}).result(60) == {{'n': 1}}", timeout=90)
    pings = json.loads([x for x in out.splitlines() if x.startswith("[")][-1])
    assert pings == [{"n": 1}], f"the receiver got {len(pings)} pings"
