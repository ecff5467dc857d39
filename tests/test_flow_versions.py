"""Run timeouts and flow versions through real kernels (issue 15): a run's
deadline is recorded when it starts, interrupts sleeps and waits, cancels
its children and survives kill -9; ``fm.patched`` lets a run recorded
before a code change keep its old path while new runs take the new one;
and a run whose code changed under it without ``fm.patched`` ends failed,
saying so, instead of hanging.

The versioned flows live in a module file beside the kernel (its cwd), the
way code edited between kernels usually lives: the restored namespace
imports the module again, so the resumed run meets the edited code."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from kernel_driver import FLOW_PRELUDE as PRELUDE
from kernel_driver import Kernel, check, fails, flow_kernel, http_json, lines, query, wait_until


@pytest.fixture(scope="module")
def fk(tmp_path_factory):
    base = tmp_path_factory.mktemp("versions")
    path = base / "history.duckdb"
    with flow_kernel(path) as k:
        yield k


def http(k: Kernel, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    return http_json(k.url + path, "POST" if body is not None else "GET", data, k.token, timeout=10)


def sql(k: Kernel, q: str, *params: str) -> list[list]:
    """A query over the history from inside its kernel (it holds the file)."""
    out = check(k, "flows.registry().journal.flush()\n"
                   f"print(json.dumps(flows.registry().journal.store.query({q!r}, "
                   f"{list(params)!r}).rows, default=str))")
    return json.loads(out.strip().splitlines()[-1])


# -- run timeouts ----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["@fm.flow(timeout={t})\ndef f():\n    return 1",
                                   "@fm.flow\ndef f():\n    return 1\nf.start(timeout={t})"])
@pytest.mark.parametrize("t", ["0", "-1", "'3'", "True", "float('nan')", "float('inf')"])
def test_bad_run_timeouts_are_refused_where_given(fk: Kernel, where: str, t: str) -> None:
    ename, evalue = fails(fk, where.format(t=t))
    assert ename == "UsageError", (ename, evalue)
    assert "timeout" in evalue and "'f'" in evalue and "> 0" in evalue, evalue


def test_a_run_timeout_interrupts_sleeps_and_waits_with_Timeout(fk: Kernel) -> None:
    check(fk, """
@fm.flow(timeout=1)
def naps():
    fm.sleep(60)
@fm.flow(timeout=60)      # start(timeout=1) below wins over this
def listens():
    fm.wait_for("never")
@fm.flow(timeout=1)
def calls_back():
    fm.callback().wait()
@fm.flow(timeout=1)
async def naps_async():
    await fm.sleep(60)
timed = [naps.start(), listens.start(timeout=1), calls_back.start(), naps_async.start()]
t0 = time.time()
errors = []
for r in timed:
    try:
        r.result(20)
    except Exception as exc:
        errors.append(type(exc).__name__)
waited = time.time() - t0
""")
    out = check(fk, "print(json.dumps([errors, waited, [r.status for r in timed], [r.id for r in timed]]))")
    errors, waited, statuses, ids = json.loads(out)
    assert errors == ["Timeout"] * 4, errors
    assert statuses == ["cancelled"] * 4, statuses
    assert waited < 5, f"the runs ended {waited:.1f}s after they started, not ~1 s"
    for rid in ids:
        (row,) = sql(fk, "SELECT status, error->>'type', epoch(deadline) - epoch(started_at),"
                         " epoch(finished_at) - epoch(started_at) FROM runs WHERE run_id = ?", rid)
        status, etype, limit, took = row
        assert status == "cancelled" and etype.endswith("Timeout"), row
        assert abs(limit - 1) < 0.01 and 0.9 < took < 4, row
    kinds = sql(fk, "SELECT kind FROM fm_events WHERE run_id = ? ORDER BY seq", ids[0])
    assert ["run_timed_out"] in kinds and ["run_failed"] not in kinds, kinds


def test_a_run_started_over_http_takes_a_timeout(fk: Kernel) -> None:
    check(fk, "@fm.flow\ndef remote_nap():\n    fm.sleep(60)")
    status, body = http(fk, "/flows/remote_nap/runs", {"timeout": 0})
    assert status == 400 and "timeout=0" in body["error"], (status, body)
    status, body = http(fk, "/flows/remote_nap/runs", {"timeout": 1})
    assert status == 201, body
    rid = body["run_id"]
    wait_until(lambda: http(fk, f"/runs/{rid}")[1]["status"] == "cancelled", timeout=10,
               what="the run's deadline")
    info = http(fk, f"/runs/{rid}")[1]
    assert info["error"]["type"].endswith("Timeout"), info
    assert abs(info["deadline"] - info["started_at"] - 1) < 0.01, info


def test_a_run_without_a_timeout_has_no_deadline(fk: Kernel) -> None:
    check(fk, "@fm.flow\ndef plain():\n    return 7\npr = plain.start(); assert pr.result(10) == 7")
    rid = check(fk, "print(pr.id)").strip()
    assert sql(fk, "SELECT status, deadline FROM runs WHERE run_id = ?", rid) == [["succeeded", None]]


def test_a_timeout_cancels_the_runs_children(fk: Kernel) -> None:
    check(fk, """
@fm.flow
def kid():
    fm.sleep(60)            # no timeout of its own
    return "kid done"
@fm.flow(timeout=1.5)
def guardian():
    c = kid.start()
    fm.sleep(60)
    return c.id
g = guardian.start()
try:
    g.result(20)
except fm.Timeout:
    pass
""")
    gid = check(fk, "print(g.id)").strip()
    ((kid_id,),) = sql(fk, "SELECT run_id FROM runs WHERE parent_run = ?", gid)
    out = check(fk, f"""
try:
    fm.get_run({kid_id!r}).result(10)
except Exception as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
""")
    ename, message = json.loads(out.strip().splitlines()[-1])
    assert ename == "Timeout" and gid in message, (ename, message)
    rows = sql(fk, "SELECT status, error->>'type' FROM runs WHERE run_id = ?", kid_id)
    assert rows[0][0] == "cancelled" and rows[0][1].endswith("Timeout"), rows


def test_a_run_timeout_keeps_its_deadline_across_kill9(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    with Kernel(env=env) as k:
        check(k, PRELUDE + "\n@fm.flow(timeout=6)\ndef long_nap():\n    fm.sleep(600)\n"
                 "nap = long_nap.start()\n"
                 # a run whose flow the next kernel will not have: it times out all the same
                 "@fm.flow(timeout=6)\ndef forgotten():\n    fm.sleep(600)\n"
                 "lost = forgotten.start()\ndel forgotten")
        run_id, lost_id = check(k, "print(nap.id, lost.id)").split()
        time.sleep(1.0)
        k.kill9()
    with Kernel(env=env) as k2:
        ready = time.time()
        out = check(k2, f"""
import fm_kernel as fm
for rid in ({run_id!r}, {lost_id!r}):
    try:
        fm.get_run(rid).result(30)
    except Exception as exc:
        print(type(exc).__name__, fm.get_run(rid).status)
""", timeout=60)
        ended = time.time()
    assert "1 wait for their flow to be defined (forgotten/" in out, out
    assert out.strip().splitlines()[-2:] == ["Timeout cancelled"] * 2, out
    ((started, deadline, finished, status),) = query(
        tmp_path / "history.duckdb", "SELECT epoch(started_at), epoch(deadline), epoch(finished_at),"
        " status FROM runs WHERE run_id = ?", [run_id])
    assert status == "cancelled" and abs(deadline - started - 6) < 0.01
    # The original deadline (6 s after the start), or at once if the restart
    # took longer than that: never 6 s after the second kernel came up.
    assert finished <= max(deadline, ready) + 1.5, (finished - started, ready - started)
    assert finished >= deadline - 0.1 and ended < ready + 6 + 5


# -- fm.patched: versions of a flow's code ------------------------------------------------------

FLOW_V1 = '''
import os
import fm_kernel as fm
D = os.path.dirname(os.path.abspath(__file__))
def mark(name):
    with open(os.path.join(D, name + ".marks"), "a") as f:
        f.write("x\\n")

@fm.step
def pick():
    mark("pick"); return "picked"

@fm.step
def ship_by_post():
    mark("post"); return "post"

@fm.step
def ship_by_courier():
    mark("courier"); return "courier"

@fm.flow
def shipping():
    pick()
{body}
    fm.wait_for("go", timeout=600)
    return how
'''
OLD = "    how = ship_by_post()"
NEW = """    if fm.patched("courier"):
        how = ship_by_courier()
    else:
        how = ship_by_post()"""


def _kill(k: Kernel) -> None:
    try:
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()


def _waiting(k: Kernel, run_var: str, states: tuple[str, ...] = ("waiting",)) -> None:
    wait_until(lambda: check(k, f"print({run_var}.status)").strip() in states, what=run_var)
    check(k, "flows.registry().journal.flush()")


def test_a_patched_flow_keeps_old_runs_on_the_old_path(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    module = tmp_path / "shipflow.py"
    module.write_text(FLOW_V1.format(body=OLD))
    k1 = Kernel(env=env, cwd=tmp_path)
    try:
        check(k1, PRELUDE + "\nimport shipflow\nold = shipflow.shipping.start()")
        old_id = check(k1, "print(old.id)").strip()
        _waiting(k1, "old")  # past ship_by_post: its result is journaled
    finally:
        _kill(k1)
    module.write_text(FLOW_V1.format(body=NEW))  # the code changes while no kernel runs
    k2 = Kernel(env=env, cwd=tmp_path)
    try:
        check(k2, PRELUDE + "\nimport shipflow\nnew = shipflow.shipping.start()")
        new_id = check(k2, "print(new.id)").strip()
        _waiting(k2, "new")
        check(k2, f"old = fm.get_run({old_id!r})")
        _waiting(k2, "old")  # resumed on the new code: replay took the old branch
    finally:
        _kill(k2)
    with Kernel(env=env, cwd=tmp_path) as k3:  # the new run replays its patch marker
        out = check(k3, "import fm_kernel as fm, json\n"
                        f"runs = [fm.get_run(i) for i in ({old_id!r}, {new_id!r})]\n"
                        "for r in runs: r.signal('go')\n"
                        "print(json.dumps([r.result(30) for r in runs]))", timeout=90)
    assert json.loads(out.strip().splitlines()[-1]) == ["post", "courier"], out
    assert lines(tmp_path / "post.marks") == ["x"], "the old run's ship_by_post ran again"
    assert lines(tmp_path / "courier.marks") == ["x"], "ship_by_courier ran again (or for the old run)"
    steps = query(tmp_path / "history.duckdb", "SELECT run_id, position, name FROM run_steps "
                  "WHERE status = 'ok' ORDER BY run_id, position")
    by_run = {rid: [n for r, _, n in steps if r == rid] for rid in (old_id, new_id)}
    assert by_run[old_id] == ["pick", "ship_by_post", "fm.wait_for(go)"], by_run
    assert by_run[new_id] == ["pick", "fm.patched(courier)", "ship_by_courier", "fm.wait_for(go)"], by_run


def test_a_removed_patch_call_is_named_and_patched_is_true_outside_flows(fk: Kernel) -> None:
    check(fk, """
@fm.step
def s():
    return 1
@fm.flow
def evolving():
    if fm.patched("p1"):
        s()
    return "ok"
er = evolving.start(); assert er.result(10) == "ok"
@fm.flow
def evolving():      # the patch call removed while a run that took it may replay
    s()
    return "ok"
assert fm.patched("anything") is True   # outside a flow there is no older code to agree with
""")
    ename, evalue = fails(fk, "er.fork(from_step=3).result(10)")
    assert ename == "NondeterminismError", evalue
    assert "'fm.patched(p1)'" in evalue and "keep that call" in evalue, evalue
    ename, evalue = fails(fk, "fm.patched('')")
    assert ename == "UsageError" and "non-empty" in evalue, evalue


EDITED_V1 = '''
import fm_kernel as fm

@fm.step
def load():
    return 1

@fm.flow
def nightly():
    load()
    fm.wait_for("go", timeout=600)
    return "done"
'''
EDITED_V2 = EDITED_V1.replace("    load()\n", "    fm.now()\n    load()\n")
# Async, with the changed step gathered beside a long sleep that still matches
# its position: the sleep's thread must not keep the failed run going.
EDITED_ASYNC_V1 = '''
import asyncio
import fm_kernel as fm

@fm.step
async def load():
    return 1

@fm.flow
async def nightly():
    await asyncio.gather(fm.sleep(600), load())
    return "done"
'''
EDITED_ASYNC_V2 = EDITED_ASYNC_V1.replace("async def load", "async def fetch").replace(
    "fm.sleep(600), load()", "fm.sleep(600), fetch()")


@pytest.mark.parametrize("v1, v2, name", [(EDITED_V1, EDITED_V2, "'load'"),
                                          (EDITED_ASYNC_V1, EDITED_ASYNC_V2, "'fetch'")],
                         ids=["sync", "async-gather"])
def test_a_run_whose_code_changed_ends_failed_naming_fm_patched(tmp_path: Path, v1: str, v2: str,
                                                                name: str) -> None:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    module = tmp_path / "nightly_flow.py"
    module.write_text(v1)
    k1 = Kernel(env=env, cwd=tmp_path)
    try:
        check(k1, PRELUDE + "\nimport nightly_flow\nrun = nightly_flow.nightly.start()")
        run_id = check(k1, "print(run.id)").strip()
        _waiting(k1, "run", ("waiting", "sleeping"))
    finally:
        _kill(k1)
    module.write_text(v2)
    with Kernel(env=env, cwd=tmp_path) as k2:
        t0 = time.time()
        out = check(k2, f"""
import fm_kernel as fm, json
try:
    fm.get_run({run_id!r}).result(20)
except Exception as exc:
    print(json.dumps([type(exc).__name__, str(exc), fm.get_run({run_id!r}).status]))
""", timeout=60)
        took = time.time() - t0
    ename, message, status = json.loads(out.strip().splitlines()[-1])
    assert ename == "NondeterminismError" and status == "failed", (ename, message, status)
    assert "fm.patched" in message and name in message, message
    assert took < 15, f"the run took {took:.0f}s to end"


# -- the docs ----------------------------------------------------------------------------------

FLOWS_MD = Path(__file__).resolve().parent.parent / "docs" / "flows.md"


def blocks(section: str, lang: str) -> list[str]:
    body = FLOWS_MD.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)


@pytest.mark.parametrize("section, printed, found", [
    ("Run timeouts", "cancelled | run ", "approval"),
    ("Changing a flow's code: `fm.patched`", "courier", ""),  # no run pending: no rows
])
def test_the_docs_samples_run_as_written(fk: Kernel, section: str, printed: str, found: str) -> None:
    (code,) = blocks(section, "python")
    assert printed in check(fk, code)
    for q in blocks(section, "sql"):
        assert found in check(fk, f"print(fm.history().sql({q!r}).to_string())")

