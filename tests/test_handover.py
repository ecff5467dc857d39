"""One writer at a time, lent back and forth (docs/reliability.md): a
notebook kernel opened on a history `fm worker` holds takes it over (no
sibling file, same port, the schedule and the runs go on in the kernel), and
the worker takes it back when the kernel ends, cleanly or killed -9. Senders
that retry 503 and refused connections lose nothing and apply nothing twice.
A history another kernel holds is still recorded beside, with one line."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kernel_driver import Kernel, check, query, send_retrying, wait_until

FM = str(Path(sys.executable).parent / "fm")
SECRET = "s3cret-for-tick"

FLOW = r'''
import os
import fm_kernel as fm
from pathlib import Path
D = Path({d!r})

@fm.step
def mark(tag):
    # one line per execution of this step, saying which process ran it
    with open(D / tag, "a") as f:
        f.write(f"{{os.getpid()}}\n")
    return tag

@fm.step
def beat():
    # the slot's run id names the file: a slot run twice has two lines
    with open(D / ("beat-" + fm.step_context().run_id), "a") as f:
        f.write(f"{{os.getpid()}}\n")

@fm.flow(schedule="* * * * * *")
def heartbeat():
    beat()

@fm.flow
def approval(item):
    cb = fm.callback()
    (D / ("url-" + item)).write_text(cb.url)
    answer = cb.wait(300)
    mark("approved-" + item)
    return {{"item": item, "approved": answer["approved"]}}

@fm.flow
def gate(item):
    mark("asked-" + item)
    fm.wait_for("go", timeout=300)
    mark("passed-" + item)
    return item

@fm.flow(on="tick")
def on_tick(payload):
    mark("tick-" + str(payload["n"]))
'''


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    return {**base, "FM_EVENT_SECRET_TICK": SECRET, **extra}


def endpoint(history: Path) -> dict:
    try:
        return json.loads(Path(str(history) + ".endpoint.json").read_text())
    except (OSError, ValueError):
        return {}


def prepare(tmp_path: Path) -> tuple[Path, Path]:
    """A history whose recorded namespace defines the flows, closed cleanly."""
    history, marks = tmp_path / "h.duckdb", tmp_path / "marks"
    marks.mkdir()
    with Kernel(env={"FM_HISTORY": str(history), "FM_EVENT_SECRET_TICK": SECRET}) as k:
        check(k, FLOW.format(d=str(marks)))
    return history, marks


def start_worker(history: Path) -> subprocess.Popen:
    worker = subprocess.Popen([FM, "worker", "--history", str(history)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: endpoint(history).get("role") == "worker", timeout=60,
                   what="the worker's endpoint")
    except BaseException:
        stop_worker(worker)  # never left running after a failed test
        raise
    return worker


def stop_worker(worker: subprocess.Popen) -> str:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        _, err = worker.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, err = worker.communicate()
    return err


def ran_by(marks: Path, prefix: str) -> dict[str, list[int]]:
    """tag -> the pids that executed that step (one per execution)."""
    return {p.name: [int(x) for x in p.read_text().split()] for p in marks.glob(prefix + "*")}


def siblings(history: Path) -> list[Path]:
    return [p for p in history.parent.glob(f"{history.stem}.*{history.suffix}") if p != history]


def kernel_pids(marks: Path, prefix: str, pid: int) -> int:
    return sum(pids.count(pid) for pids in ran_by(marks, prefix).values())


def slots(history: Path) -> list[int]:
    rows = query(history, "SELECT CAST(payload->>'slot' AS DOUBLE) FROM fm_events "
                          "WHERE kind = 'flow_scheduled' ORDER BY 1")
    return [int(r[0]) for r in rows]


def gaps_outside(recorded: list[int], windows: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Consecutive recorded slots more than a second apart whose gap no
    hand-over window explains."""
    out = []
    for a, b in zip(recorded, recorded[1:]):
        if b - a > 1 and not any(lo - 1 <= b and a <= hi + 1 for lo, hi in windows):
            out.append((a, b))
    return out


def test_a_kernel_takes_the_history_over_and_the_worker_takes_it_back(tmp_path: Path) -> None:
    history, marks = prepare(tmp_path)
    worker = start_worker(history)
    try:
        wait_until(lambda: kernel_pids(marks, "beat-", endpoint(history).get("pid", -1)) >= 2,
                   timeout=60, what="beats under the worker")
        port, worker_pid, token = (endpoint(history)[k] for k in ("port", "pid", "token"))
        t0 = time.time()
        k = Kernel(env={"FM_HISTORY": str(history)})
        kpid = k.pid
        try:
            out = check(k, "import fm_kernel as fm\nprint('runs', len(fm.runs()))")
            assert not siblings(history), siblings(history)
            notes = [ln for ln in out.splitlines() if "over to this kernel" in ln]
            assert len(notes) == 1 and str(worker_pid) in notes[0], out
            assert endpoint(history)["role"] == "kernel"
            assert endpoint(history)["port"] == port and endpoint(history)["token"] == token
            wait_until(lambda: kernel_pids(marks, "beat-", k.pid) >= 3, timeout=60,
                       what="beats under the kernel")
            t1 = time.time()
            seen = int(check(k, "print((fm.runs()['flow'] == 'heartbeat').sum())").split()[-1])
            by_worker = kernel_pids(marks, "beat-", worker_pid)
            assert seen >= by_worker + 3, (seen, by_worker)  # the worker's runs are in its history
            t2 = time.time()
        finally:
            k.shutdown()
        kernel_beats = kernel_pids(marks, "beat-", kpid)
        wait_until(lambda: endpoint(history).get("role") == "worker", timeout=60,
                   what="the worker to take the history back")
        again = endpoint(history)["pid"]
        assert again != worker_pid
        assert endpoint(history)["port"] == port and endpoint(history)["token"] == token
        wait_until(lambda: kernel_pids(marks, "beat-", again) >= 2, timeout=60,
                   what="beats under the worker again")
        t3 = time.time()
    finally:
        err = stop_worker(worker)
    assert worker.returncode == 0, err
    assert "handed" in err and "stopping" in err, err
    assert kernel_beats >= 3
    assert all(len(pids) == 1 for pids in ran_by(marks, "beat-").values()), ran_by(marks, "beat-")
    recorded = slots(history)
    assert len(recorded) == len(set(recorded)), "a slot was recorded twice"
    assert not gaps_outside([s for s in recorded if s >= t0 - 1],
                            [(t0, t1), (t2, t3)]), recorded


def test_a_kernel_killed_9_gives_the_history_back_with_its_pending_runs(tmp_path: Path) -> None:
    history, marks = prepare(tmp_path)
    worker = start_worker(history)
    try:
        token = endpoint(history)["token"]  # a sender's, kept across both hand-overs
        k = Kernel(env={"FM_HISTORY": str(history)})
        try:
            run_id = check(k, "import fm_kernel as fm\nr = gate.start('G'); print(r.id)").split()[-1]
            wait_until(lambda: (marks / "asked-G").exists(), what="the kernel's run to wait")
            assert endpoint(history)["role"] == "kernel"
            k.kill9()
        finally:
            if k.km.is_alive():
                k.shutdown()
        wait_until(lambda: endpoint(history).get("role") == "worker", timeout=60,
                   what="the worker to take the history back")
        url = endpoint(history)["url"]
        status, body = post(f"{url}/runs/{run_id}/signals/go", {}, token=token)
        assert status == 200, body
        status, body = get(f"{url}/runs/{run_id}/result?wait=60", token=token)
        assert status == 200 and body["status"] == "succeeded" and body["result"] == "G", body
    finally:
        err = stop_worker(worker)
    assert worker.returncode == 0, err
    assert ran_by(marks, "asked-")["asked-G"] == [k.pid]  # not asked again by the worker
    assert len(ran_by(marks, "passed-")["passed-G"]) == 1
    assert query(history, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)]


def test_a_callback_url_from_the_worker_resolves_in_the_kernel(tmp_path: Path) -> None:
    history, marks = prepare(tmp_path)
    worker = start_worker(history)
    try:
        info = endpoint(history)
        status, body = post(f"{info['url']}/flows/approval/runs", {"args": ["po-3"]},
                            token=info["token"])
        assert status in (200, 201), body
        run_id = body["run_id"]
        wait_until(lambda: (marks / "url-po-3").exists() and (marks / "url-po-3").read_text(),
                   what="the callback URL")  # written by the flow: exists a moment before it has text
        url = (marks / "url-po-3").read_text()
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            kpid = k.pid
            check(k, "1")
            assert endpoint(history)["role"] == "kernel" and endpoint(history)["port"] == info["port"]
            status, body = post(url, {"approved": True})  # the URL the worker handed out
            assert status == 200 and body["duplicate"] is False, body
            out = check(k, f"import fm_kernel as fm\nprint(fm.get_run({run_id!r}).result(60))")
            assert "'approved': True" in out and "po-3" in out, out
        assert ran_by(marks, "approved-")["approved-po-3"] == [kpid]
    finally:
        err = stop_worker(worker)
    assert worker.returncode == 0, err


def test_events_sent_through_a_hand_over_are_applied_once_each(tmp_path: Path) -> None:
    history, marks = prepare(tmp_path)
    worker = start_worker(history)
    answers: list[tuple[int, dict]] = []
    refused: list[str] = []
    done = threading.Event()
    try:
        url = endpoint(history)["url"]

        def send() -> None:  # one delivery after another, across both hand-overs
            while not done.is_set():
                i = len(answers)
                answers.append(post_retrying(f"{url}/events/tick", {"n": i}, f"d-{i}", refused))
                time.sleep(0.05)

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: len(answers) >= 5, what="the first events")
        with Kernel(env={"FM_HISTORY": str(history), "FM_EVENT_SECRET_TICK": SECRET}) as k:
            check(k, "1")
            wait_until(lambda: kernel_pids(marks, "tick-", k.pid) >= 5, timeout=60,
                       what="events handled by the kernel")
        wait_until(lambda: endpoint(history).get("role") == "worker", timeout=60,
                   what="the worker to take the history back")
        back = endpoint(history)["pid"]
        wait_until(lambda: kernel_pids(marks, "tick-", back) >= 5, timeout=60,
                   what="events handled by the worker again")
        done.set()
        sender.join(timeout=120)
        assert not sender.is_alive()
        n = len(answers)
        wait_until(lambda: len(ran_by(marks, "tick-")) == n, timeout=60,
                   what=f"every event's run ({n} sent, {len(ran_by(marks, 'tick-'))} ran)")
    finally:
        done.set()
        err = stop_worker(worker)
    assert worker.returncode == 0, err
    assert all(status in (200, 201) for status, _ in answers), answers
    ticks = ran_by(marks, "tick-")
    assert sorted(ticks) == sorted(f"tick-{i}" for i in range(n))
    assert all(len(pids) == 1 for pids in ticks.values()), ticks
    assert refused, "the sender never met a hand-over: the test proves nothing"
    rows = query(history, "SELECT count(*), count(DISTINCT run_id) FROM runs WHERE flow = 'on_tick'")
    assert rows == [(n, n)]
    events = query(history, "SELECT count(*), count(DISTINCT payload->>'delivery_id') FROM fm_events "
                            "WHERE kind = 'event_received'")
    assert events == [(n, n)]


def test_a_history_another_kernel_holds_is_recorded_beside_with_one_line(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k1:
        check(k1, "x = 1")
        with Kernel(env={"FM_HISTORY": str(history)}) as k2:
            out = check(k2, "y = 2")
            notes = [ln for ln in out.splitlines() if "in use by" in ln]
            assert len(notes) == 1 and f"process {k1.pid}" in notes[0] \
                and "not `fm worker`" in notes[0], out
            assert len(siblings(history)) == 1


def test_a_worker_started_while_a_kernel_holds_the_history_stands_by(tmp_path: Path) -> None:
    history, marks = prepare(tmp_path)
    k = Kernel(env={"FM_HISTORY": str(history)})
    try:
        check(k, FLOW.format(d=str(marks)))  # its namespace is what the worker restores
        held = subprocess.run([FM, "worker", "--exit-if-held", "--history", str(history)],
                              capture_output=True, text=True, env=env(), timeout=60)
        assert held.returncode == 1 and "in use by" in held.stderr, held.stderr
        worker = subprocess.Popen([FM, "worker", "--history", str(history)], env=env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert worker.stderr is not None
        first = worker.stderr.readline()  # said while the kernel still holds the history
        assert "standing by" in first and f"process {k.pid}" in first, first
    finally:
        k.shutdown()
    try:
        wait_until(lambda: endpoint(history).get("role") == "worker", timeout=60,
                   what="the worker to take the history once the kernel ended")
        wait_until(lambda: kernel_pids(marks, "beat-", endpoint(history)["pid"]) >= 1,
                   timeout=60, what="beats under the worker")
    finally:
        err = stop_worker(worker)
    assert worker.returncode == 0, err


# -- a sender as an integrator writes one ----------------------------------------------------


def post(url: str, body: dict, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    if token:
        req.add_header("Authorization", f"token {token}")
    return _send(req)


def get(url: str, token: str) -> tuple[int, dict]:
    return _send(urllib.request.Request(url, headers={"Authorization": f"token {token}"}))


def _send(req: urllib.request.Request) -> tuple[int, dict]:
    """One request; a 503 (a hand-over, or a holder still restoring its
    flows) is retried after its Retry-After, as every sender must."""
    return send_retrying(req)


def post_retrying(url: str, body: dict, delivery: str, refused: list) -> tuple[int, dict]:
    """A signed webhook delivery, retried on 503 and refused or broken
    connections (docs/integrations.md, "Hand-overs"); its delivery id makes a
    retry of one that did arrive a duplicate, not a second event."""
    raw = json.dumps(body).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": sig, "X-Delivery-Id": delivery,
               "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=raw, method="POST", headers=headers)
    return send_retrying(req, refused, tries=200, timeout=30)
