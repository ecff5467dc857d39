"""overlap= on scheduled flows: "skip" (default) starts no run for a slot
while the previous run is still going; "allow" starts one every slot;
"queue" keeps one slot waiting in the flow's own queue and starts it when
the previous run ends, in slot order, never two at once, the waiting slot
kept across kill -9 (later slots while one waits are dropped: the bound).
Any other value is refused where the flow is defined."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kernel_driver import Kernel, check, most_at_once, query

FLOWS = r'''
import time
import fm_kernel as fm

@fm.flow(schedule="* * * * * *")
def skipping():
    time.sleep(3.5)

@fm.flow(schedule="* * * * * *", overlap="allow")
def allowing():
    time.sleep(3.5)
'''


def test_skip_is_default_and_allow_overlaps(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute(FLOWS).status == "ok"
        time.sleep(7.5)
        bad = k.execute('@fm.flow(schedule="* * * * *", overlap="later")\ndef q(): pass')
        assert bad.status == "error" and "overlap='later'" in bad.content["evalue"]
        assert "'queue'" in bad.content["evalue"]  # the error names every choice
        assert k.execute("print(3)").status == "ok"
    counts = dict(query(history, "SELECT flow, count(DISTINCT run_id) FROM runs GROUP BY flow"))
    assert 1 <= counts.get("skipping", 0) <= 3, counts   # one run per ~4 s at most
    assert counts.get("allowing", 0) >= 5, counts         # one per second


def slot_of(run_id: str) -> int:
    return int(run_id.rsplit("-at-", 1)[1])


# Every run takes longer than a slot: with "skip" most slots would be lost,
# with "allow" runs would overlap.
QUEUED = r'''
import time
import fm_kernel as fm

@fm.flow(schedule="* * * * * *", overlap="queue")
def slow():
    time.sleep(2.5)

def count(where):
    return fm.history().sql("SELECT count(*) FROM runs WHERE flow = 'slow' AND " + where).values[0][0]
'''

DRAIN = r'''
t = time.time()
while count("status = 'succeeded'") < 3 and time.time() - t < 90:
    time.sleep(0.2)
fm.flows.registry().scheduler.remove("slow")   # no more slots; the waiting one still starts
while count("status NOT IN ('succeeded', 'failed', 'cancelled')") and time.time() - t < 120:
    time.sleep(0.2)
'''

RUNS = ("SELECT run_id, status, queue, epoch(enqueued_at), epoch(started_at), epoch(finished_at)"
        " FROM runs WHERE flow = ? ORDER BY started_at")


def test_queue_starts_each_waiting_slot_after_the_previous_run_in_slot_order(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, QUEUED)
        check(k, DRAIN, timeout=150)
    rows = query(history, RUNS, ["slow"])
    assert len(rows) >= 3 and {r[1] for r in rows} == {"succeeded"}, rows
    assert {r[2] for r in rows} == {"schedule.slow"}, rows  # the flow's own queue
    slots = [slot_of(r[0]) for r in rows]
    assert slots == sorted(slots) and len(set(slots)) == len(slots), slots  # slot order, once each
    for before, after in zip(rows, rows[1:]):
        assert after[4] >= before[5], ("two runs at once", before, after)
        # queued, not skipped: the slot came while the previous run was going
        assert after[3] < before[5], ("a slot that did not wait", before, after)
    # the bound: never more than one slot waiting; the slots in between were dropped
    assert most_at_once([(r[3], r[4]) for r in rows[1:]]) == 1, rows
    dropped = query(history, "SELECT count(*) FROM events WHERE kind = 'flow_scheduled' "
                             "AND payload->>'flow' = 'slow' AND run_id IS NULL")[0][0]
    assert dropped >= 1, "no slot came while one was waiting: the bound was not exercised"


HELD = r'''
import os, time, json
import fm_kernel as fm
from fm_kernel.flows.context import current_run
D = {d!r}

@fm.step
def mark(run_id):
    with open(os.path.join(D, "marks"), "a") as f:
        f.write(run_id + "\n")

@fm.flow(schedule="* * * * * *", overlap="queue")
def held():
    mark(current_run().run.id)
    while os.path.exists(os.path.join(D, "hold")):
        time.sleep(0.05)
'''

PAIR = r'''
def pair():
    df = fm.history().sql("SELECT run_id, status FROM runs WHERE flow = 'held'")
    going = [r for r, s in df.values if s == "running"]
    waiting = [r for r, s in df.values if s == "enqueued"]
    return going, waiting
t = time.time()
while time.time() - t < 60 and not all(pair()):
    time.sleep(0.1)
time.sleep(1.5)   # a slot or more comes while one waits: dropped, not a second waiting
going, waiting = pair()
print(json.dumps([going, waiting]))
'''


def test_a_waiting_slot_survives_kill9_and_runs_once_after_the_previous(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    env = {"FM_HISTORY": str(history)}
    (tmp_path / "hold").touch()
    k = Kernel(env=env)
    try:
        check(k, HELD.format(d=str(tmp_path)))
        going, waiting = json.loads(check(k, PAIR, timeout=90).strip().splitlines()[-1])
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    assert len(going) == 1 and len(waiting) == 1, (going, waiting)
    (a,), (b,) = going, waiting
    assert slot_of(a) < slot_of(b)
    (tmp_path / "hold").unlink()
    with Kernel(env=env) as k2:  # the restored namespace defines the flow, and so its queue
        check(k2, f"import fm_kernel as fm, time\nfm.get_run({b!r}).result(60)\n"
                  "fm.flows.registry().scheduler.remove('held')\nt = time.time()\n"
                  "while time.time() - t < 60 and fm.history().sql(\"SELECT count(*) FROM runs "
                  "WHERE flow = 'held' AND status NOT IN ('succeeded', 'failed', 'cancelled')\")"
                  ".values[0][0]: time.sleep(0.1)", timeout=150)
    rows = query(history, RUNS, ["held"])
    by_id = {r[0]: r for r in rows}
    assert by_id[a][1] == by_id[b][1] == "succeeded", rows
    assert by_id[b][4] >= by_id[a][5], ("the waiting slot started before the previous run ended",
                                        by_id[a], by_id[b])
    assert most_at_once([(r[4], r[5]) for r in rows]) == 1, rows
    starts = query(history, "SELECT count(*) FROM events WHERE kind = 'run_started' "
                            "AND run_id = ?", [b])[0][0]
    assert starts == 1, f"the waiting slot's run started {starts} times"
    marks = (tmp_path / "marks").read_text().split()
    assert marks.count(b) == 1, marks  # its body ran once
    slots = [slot_of(r[0]) for r in rows]
    assert slots == sorted(slots), slots


def test_every_flow_name_gives_a_queue_name_a_queue_takes() -> None:
    from fm_kernel.flows.queues import Queue
    from fm_kernel.flows.schedule import slot_queue_name

    names = ("report", "outer.<locals>.inner", "a b/c", "x" * 300)
    queues = [Queue(slot_queue_name(n), concurrency=1, register=False).name for n in names]
    assert queues[:2] == ["schedule.report", "schedule.outer._locals_.inner"], queues
    assert len(set(queues)) == len(names)
