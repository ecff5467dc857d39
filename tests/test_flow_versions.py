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
import time
from pathlib import Path

import pytest

from kernel_driver import Kernel, check, fails, lines, query, wait_until

PRELUDE = "import os, time, json\nimport fm_kernel as fm\nimport fm_kernel.flows as flows"


@pytest.fixture(scope="module")
def fk(tmp_path_factory):
    base = tmp_path_factory.mktemp("versions")
    path = base / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, PRELUDE)
        info = json.loads(Path(str(path) + ".endpoint.json").read_text())
        k.url, k.token, k.path = info["url"], info["token"], path  # type: ignore[attr-defined]
        yield k


def http(k: Kernel, path: str, body: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(k.url + path, data=data, method="POST" if body is not None else "GET")  # type: ignore[attr-defined]
    req.add_header("Authorization", f"token {k.token}")  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


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
timed = [naps.start(), listens.start(timeout=1), calls_back.start()]
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
    assert errors == ["Timeout"] * 3, errors
    assert statuses == ["cancelled"] * 3, statuses
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
    k = Kernel(env=env)
    try:
        check(k, PRELUDE + "\n@fm.flow(timeout=6)\ndef long_nap():\n    fm.sleep(600)\n"
                 "nap = long_nap.start()")
        run_id = check(k, "print(nap.id)").strip()
        time.sleep(1.0)
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    with Kernel(env=env) as k2:
        ready = time.time()
        ename = check(k2, f"""
import fm_kernel as fm
try:
    fm.get_run({run_id!r}).result(30)
except Exception as exc:
    print(type(exc).__name__)
""", timeout=60).strip().splitlines()[-1]
        ended = time.time()
    assert ename == "Timeout", ename
    ((started, deadline, finished, status),) = query(
        tmp_path / "history.duckdb", "SELECT epoch(started_at), epoch(deadline), epoch(finished_at),"
        " status FROM runs WHERE run_id = ?", [run_id])
    assert status == "cancelled" and abs(deadline - started - 6) < 0.01
    # The original deadline (6 s after the start), or at once if the restart
    # took longer than that: never 6 s after the second kernel came up.
    assert finished <= max(deadline, ready) + 1.5, (finished - started, ready - started)
    assert finished >= deadline - 0.1 and ended < ready + 6 + 5
