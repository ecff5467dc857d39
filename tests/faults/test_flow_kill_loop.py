"""kill -9 of the kernel at random moments while flows start children, send
messages between runs and take them, and enqueue runs on an fm.Queue with a
concurrency and a rate limit: at least 50 kills, each followed by a new
kernel that resumes the pending runs by itself. Afterwards every run has
finished with the right result, no journal position is recorded `ok` twice,
each child was started once, each message sent and taken once and each
enqueued run enqueued and started once (the effects a replay must never
repeat), whatever step bodies ran again in the documented at-least-once
window (a kill between a body's end and its record); and the queue's runs,
by their recorded start and finish times, never ran more than its
concurrency at once nor started faster than its rate, restarts included.

The seed is printed; FM_FAULT_SEED=<n> replays a run, FM_FLOW_KILLS=<n> sets
how many kills (default 50)."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, most_at_once, most_in_window, query  # noqa: E402

KILLS = int(os.environ.get("FM_FLOW_KILLS", "50"))
SEED = int(os.environ.get("FM_FAULT_SEED", str(random.randrange(1 << 30))))
PARENTS = 20
JOBS = 20  # enqueued one by one by a feeder flow
# at most 3 starts in any 4 s: a period longer than a restart, so a new kernel must count
# the starts its killed predecessor made (from the run records) to keep the rate
CONCURRENCY, RATE = 2, (3, 4)

FLOWS = """
import time, fm_kernel as fm
MARKS = {marks!r}

@fm.step
def mark(tag):
    time.sleep(0.15)
    with open(MARKS, "a") as f:
        f.write(tag + "\\n")
    return tag

@fm.flow
def kid(i):
    mark(f"k{{i}}")
    mark(f"c{{i}}")
    return i * 10

@fm.flow
def parent(i, to):
    mark(f"a{{i}}")
    got = kid.start(i).result(600)
    fm.send(to, "t", {{"i": i, "kid": got}})
    mark(f"b{{i}}")
    return got

@fm.flow
def driver(n, to):  # one parent after another: the work outlasts many kills
    return [parent.start(i, to).result(600) for i in range(n)]

kq = fm.Queue("kq", concurrency={concurrency}, rate={rate})

@fm.flow
def job(i):
    mark(f"j{{i}}")
    mark(f"d{{i}}")
    return i * 100

@fm.flow
def feeder(n):  # the enqueues themselves are spread over many kills
    runs = []
    for i in range(n):
        runs.append(kq.enqueue(job, i))
        mark(f"e{{i}}")
    return [r.result() for r in runs]

@fm.flow
def receiver(n):
    seen = []
    for _ in range(n):
        m = fm.recv("t", timeout=600)
        mark(f"r{{m['i']}}")
        seen.append(m["i"])
    return sorted(seen)
"""

START = (f"rcv = receiver.start({PARENTS})\n"
         f"drv = driver.start({PARENTS}, rcv.id)\n"
         f"fed = feeder.start({JOBS})\n"
         "ids = [rcv.id, drv.id, fed.id]")


def finished(history: Path) -> bool:
    rows = query(history, "SELECT count(*) FILTER (WHERE status NOT IN "
                          "('succeeded', 'failed', 'cancelled')), count(*) FROM runs")
    pending, total = rows[0]
    return total >= 3 + 2 * PARENTS + JOBS and pending == 0


@pytest.mark.timeout(900)
def test_children_and_messages_survive_fifty_kills_each_once(tmp_path: Path) -> None:
    print(f"FM_FAULT_SEED={SEED}")
    rng = random.Random(SEED)
    history, marks = tmp_path / "h.duckdb", tmp_path / "marks"
    env = {"FM_HISTORY": str(history)}
    with Kernel(env=env) as k:
        r = k.execute(FLOWS.format(marks=str(marks), concurrency=CONCURRENCY, rate=RATE))
        assert r.status == "ok", r.content
        r = k.execute(START + "\nprint(ids)")
        assert r.status == "ok", r.text()
        time.sleep(rng.uniform(0.05, 0.35))
        k.kill9()
    kills = 1
    while kills < KILLS and not finished(history):
        with Kernel(env=env) as k:  # auto-resume: namespace back, pending runs go on
            k.execute("1")  # the restore and the resume happen before the first cell
            time.sleep(rng.uniform(0.05, 0.35))
            k.kill9()
        kills += 1
    with Kernel(env=env) as k:
        r = k.execute("import json, fm_kernel as fm\n"
                      "print(json.dumps([ids, [fm.get_run(i).result(120) for i in ids]]))",
                      timeout=240)
        assert r.status == "ok", r.text()
    ids, results = json.loads(r.text().strip().splitlines()[-1])
    lines = marks.read_text().split()
    again = sum(lines.count(t) - 1 for t in set(lines))
    print(f"{kills} kills; {again} step bodies ran again (killed between their end and record)")
    assert kills == KILLS, f"the runs finished after {kills} kills; the work must outlast them"
    assert results[0] == list(range(PARENTS))  # each message taken once
    assert results[1] == [i * 10 for i in range(PARENTS)]
    assert results[2] == [i * 100 for i in range(JOBS)]  # each enqueued run finished
    twice = query(history, "SELECT run_id, position, count(*) FROM run_steps WHERE status = 'ok' "
                           "GROUP BY ALL HAVING count(*) > 1")
    assert twice == [], f"positions recorded ok twice: {twice}"
    for flow in ("parent", "kid"):  # each child started once by its parent's position
        started = query(history, "SELECT parent_run, parent_position, count(*) FROM runs "
                                 "WHERE flow = ? GROUP BY ALL", [flow])
        assert len(started) == PARENTS and all(n == 1 for *_, n in started), (flow, started)
    sent = query(history, "SELECT count(*), count(DISTINCT payload->>'key') FROM events "
                          "WHERE kind = 'message'")
    assert sent == [(PARENTS, PARENTS)], sent  # each message stored once
    for tag in [f"{c}{i}" for c in "akcbr" for i in range(PARENTS)]:
        assert 1 <= lines.count(tag) <= 3, (tag, lines.count(tag))  # ran; at least once
    check_queue(history, ids[2], lines)


def check_queue(history: Path, feeder: str, lines: list[str]) -> None:
    """Each job enqueued once (one run per feeder position) and started once
    by the queue (a run a kill caught running resumes; it is not started
    again), within the queue's limits by the recorded times."""
    rows = query(history, "SELECT run_id, parent_position, queue, status, epoch(started_at), "
                          "epoch(finished_at) FROM runs WHERE flow = 'job' AND parent_run = ?",
                 [feeder])
    assert len(rows) == JOBS and len({r[1] for r in rows}) == JOBS, rows
    assert {(r[2], r[3]) for r in rows} == {("kq", "succeeded")}, rows
    started = dict(query(history, "SELECT run_id, count(*) FROM events WHERE kind = 'run_started'"
                                  " AND payload->>'queue' = 'kq' GROUP BY run_id"))
    assert all(started.get(r[0], 0) <= 1 for r in rows), ("started twice", started)
    resumed = query(history, "SELECT count(DISTINCT run_id) FROM events WHERE kind = 'run_resumed'"
                             " AND payload->>'flow' = 'job'")[0][0]
    most, fastest = most_at_once([(r[4], r[5]) for r in rows]), most_in_window([r[4] for r in rows],
                                                                              RATE[1] * 0.99)
    print(f"queue kq: {JOBS} jobs, {resumed} caught running by a kill and resumed; at most {most} "
          f"at once (limit {CONCURRENCY}), at most {fastest} starts in {RATE[1]} s (limit {RATE[0]})")
    assert resumed >= 1, "no kill landed on a running job: the queue was not under test"
    assert most <= CONCURRENCY, rows
    assert fastest <= RATE[0], sorted(r[4] for r in rows)
    for tag in [f"{c}{i}" for c in "ejd" for i in range(JOBS)]:
        assert 1 <= lines.count(tag) <= 3, (tag, lines.count(tag))
