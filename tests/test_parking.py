"""A run that waits holds no thread (issue 15), through real kernels: a
thousand sleeping runs in one kernel on few threads, parked runs woken by a
signal, a callback POST, a message (fm.recv), a child's end and another
run's event; cancel of a parked run; kill -9 with parked runs; and no step
running twice however often a run parks and replays.

Each test fails on the code from before parking: there every waiting run
held a thread (`run.parked` did not exist, 1,000 sleepers meant 1,000+
threads)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kernel_driver import Kernel, check, flow_kernel, lines, query, wait_until

PRELUDE = "import os, time, json, threading\nimport fm_kernel as fm\nimport fm_kernel.flows as flows"

FLOWS = r'''
D = {d!r}
def mark(name):
    with open(os.path.join(D, name), "a") as f:
        f.write("x\n")

@fm.step
def note(name):
    mark(name)
    return name

@fm.flow
def by_signal():
    note("sig.before")
    got = fm.wait_for("go")
    note("sig.after")
    return got

@fm.flow
def by_callback():
    cb = fm.callback()
    fm.set_event("url", cb.url)
    return cb.wait()

@fm.flow
def by_message():
    return fm.recv("pay")

@fm.flow
def long_nap():
    fm.sleep(600)
    return "woke"

@fm.flow
def child_waits():
    return fm.wait_for("child-go")

@fm.flow
def parent_of():
    c = child_waits.start()
    return ["parent", c.result()]

@fm.flow
def reader(target_id):
    return fm.get_run(target_id).get_event("ready")

@fm.flow
def publisher():
    fm.wait_for("publish")
    fm.set_event("ready", 42)
    return "published"

@fm.flow
def guarded():
    note("g.1")
    try:
        fm.wait_for("one")
    except Exception:
        mark("g.caught")   # a park is not an Exception: never written
        raise
    finally:
        mark("g.finally")  # runs at each park, and once more at the end
    note("g.2")
    fm.wait_for("two")
    note("g.3")
    return "done"
'''


@pytest.fixture(scope="module")
def pk(tmp_path_factory):
    base = tmp_path_factory.mktemp("parking")
    path = base / "history.duckdb"
    with flow_kernel(path, PRELUDE + FLOWS.format(d=str(base))) as k:
        k.dir = base  # type: ignore[attr-defined]
        yield k


def parked(k: Kernel, var: str, timeout: float = 20) -> None:
    """Wait until run ``var`` (a name in the kernel) is parked: waiting with no thread."""
    wait_until(lambda: check(k, f"print(getattr({var}, 'parked', False))").strip() == "True",
               timeout=timeout, what=f"{var} to park")


def post(url: str, body: dict) -> int:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def test_a_thousand_sleeping_runs_hold_few_threads(pk: Kernel) -> None:
    out = check(pk, r'''
peak = [threading.active_count()]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], threading.active_count())
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()

@fm.flow
def napper(i):
    fm.sleep(4)
    return i * 3

t0 = time.time()
nappers = [napper.start(i) for i in range(1000)]
started = time.time() - t0
asleep = sum(1 for r in nappers if r.status == "sleeping")
results = [r.result(120) for r in nappers]
stop.set()
print(json.dumps({"peak": peak[0], "ok": results == [i * 3 for i in range(1000)],
                  "started_s": started, "parked_seen": sum(getattr(r, "parked", False) for r in nappers[:1])}))
''', timeout=240)
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["ok"], figures
    assert figures["peak"] < 50, f"{figures['peak']} threads while 1,000 runs slept"
    print(f"1,000 sleeping runs: peak {figures['peak']} threads")


def test_a_parked_run_wakes_on_a_signal(pk: Kernel) -> None:
    check(pk, "s = by_signal.start()")
    parked(pk, "s")
    seen = check(pk, "print(s.status, flows.registry().journal.run_row(s.id)['status'])").split()
    assert seen == ["waiting", "waiting"], seen  # the runs view says what it waits for
    check(pk, "s.signal('go', {'n': 7})")
    assert check(pk, "print(s.result(20))").strip() == "{'n': 7}"
    assert len(lines(pk.dir / "sig.before")) == 1 and len(lines(pk.dir / "sig.after")) == 1  # type: ignore[attr-defined]


def test_a_parked_run_wakes_on_a_callback_post(pk: Kernel) -> None:
    url = check(pk, "c = by_callback.start()\nprint(c.get_event('url', timeout=20))").strip()
    parked(pk, "c")
    assert post(url, {"approved": True}) == 200
    assert check(pk, "print(c.result(20))").strip() == "{'approved': True}"


def test_a_parked_run_wakes_on_a_message(pk: Kernel) -> None:
    check(pk, "m = by_message.start()")
    parked(pk, "m")
    check(pk, "fm.send(m.id, 'pay', {'amount': 5})")
    assert check(pk, "print(m.result(20))").strip() == "{'amount': 5}"


def test_a_parent_parks_on_its_childs_result(pk: Kernel) -> None:
    check(pk, "par = parent_of.start()\nwait = time.time()")
    parked(pk, "par")
    check(pk, "kid = [r for r in fm.runs()['run_id'] if fm.get_run(r).flow_name == 'child_waits'][0]\n"
              "fm.get_run(kid).signal('child-go', 'k')")
    assert check(pk, "print(par.result(20))").strip() == "['parent', 'k']"


def test_a_run_parks_on_another_runs_event(pk: Kernel) -> None:
    check(pk, "pub = publisher.start()\nrd = reader.start(pub.id)")
    parked(pk, "rd")
    check(pk, "pub.signal('publish')")
    assert check(pk, "print(rd.result(20), pub.result(20))").strip() == "42 published"


def test_cancel_of_a_parked_run_is_at_once(pk: Kernel) -> None:
    check(pk, "z = long_nap.start()")
    parked(pk, "z")
    out = check(pk, "t0 = time.time(); print(z.cancel())\n"
                    "try:\n    z.result(10)\nexcept fm.Cancelled:\n    print('cancelled', z.status)\n"
                    "print(round(time.time() - t0, 2))")
    said = out.strip().splitlines()
    assert said[:2] == ["True", "cancelled cancelled"], out
    assert float(said[2]) < 2.0, out


def test_parks_and_replays_run_no_step_twice(pk: Kernel) -> None:
    check(pk, "g = guarded.start()")
    parked(pk, "g")
    for _ in range(3):  # signals it does not wait for: each wakes it and it parks again
        check(pk, "g.signal('noise')")
        parked(pk, "g")
    check(pk, "g.signal('one')")
    wait_until(lambda: lines(pk.dir / "g.2"), what="the step after the first wait")  # type: ignore[attr-defined]
    parked(pk, "g")
    check(pk, "g.signal('two')")
    assert check(pk, "print(g.result(20))").strip() == "done"
    d = pk.dir  # type: ignore[attr-defined]
    assert [len(lines(d / n)) for n in ("g.1", "g.2", "g.3")] == [1, 1, 1]
    assert not lines(d / "g.caught")
    assert len(lines(d / "g.finally")) >= 2  # every park unwound through it, then the end


def test_parked_runs_survive_kill9_and_finish(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "history.duckdb")}
    d = tmp_path / "marks"
    d.mkdir()
    code = PRELUDE + f"\nD = {str(d)!r}\n" + r'''
def mark(name):
    with open(os.path.join(D, name), "a") as f:
        f.write("x\n")
@fm.step
def side(name, i):
    mark(f"{name}.{i}")
    return i
@fm.flow
def durable(i):
    a = side("a", i)
    fm.sleep(6)
    got = fm.wait_for("go")
    b = side("b", i)
    return a + b + got
'''
    k = Kernel(env=env)
    try:
        check(k, code + "rs = [durable.start(i) for i in range(20)]\nids = [r.id for r in rs]")
        ids = json.loads(check(k, "print(json.dumps(ids))"))
        wait_until(lambda: check(k, "print(sum(getattr(r, 'parked', False) for r in rs))").strip() == "20",
                   what="20 runs parked")
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    with Kernel(env=env) as k2:
        check(k2, code + f"ids = {ids!r}\nrs = [fm.get_run(i) for i in ids]")
        wait_until(lambda: check(k2, "print(sum(getattr(r, 'parked', False) for r in rs))").strip() == "20",
                   timeout=30, what="the resumed runs to park again")
        check(k2, "for r in rs:\n    r.signal('go', 100)")
        out = check(k2, "print(json.dumps([r.result(60) for r in rs]))", timeout=120)
    assert json.loads(out.strip().splitlines()[-1]) == [2 * i + 100 for i in range(20)]
    for i in range(20):
        assert len(lines(d / f"a.{i}")) == 1 and len(lines(d / f"b.{i}")) == 1, i
    rows = query(tmp_path / "history.duckdb", "SELECT count(*) FROM runs WHERE status = 'succeeded'")
    assert rows[0][0] == 20


def test_async_flows_park_too_and_a_gathered_step_runs_once(pk: Kernel) -> None:
    check(pk, r'''
import asyncio
@fm.step
async def anote(name):
    await asyncio.sleep(0.3)   # still running when the sleep beside it parks
    mark(name)
    return name

@fm.flow
async def apark():
    a, _ = await asyncio.gather(anote("as.1"), fm.sleep(1.5))
    got = await fm.wait_for("go")
    return [a, got]

ar = apark.start()
''')
    parked(pk, "ar")
    wait_until(lambda: check(pk, "print(ar.parked_at or '')").startswith("fm.wait_for(go)"),
               what="the async run to park at its wait")
    check(pk, "ar.signal('go', 1)")
    assert check(pk, "print(ar.result(20))").strip() == "['as.1', 1]"
    assert len(lines(pk.dir / "as.1")) == 1  # type: ignore[attr-defined]
