"""Messages between runs and the events a run publishes, as DBOS has them:
``fm.send(run_id, topic, data)`` / ``fm.recv(topic)`` and
``fm.set_event(key, value)`` / ``run.get_event(key)``.

A message is one ``fm_events`` row of kind ``message`` for the receiving
run (payload: ``topic``, ``data``, ``key``, ``from_run``), committed to
DuckDB before ``send`` returns, whether or not the receiver waits yet. Its
``key`` makes delivery exactly-once: a send inside a flow is keyed by the
sender's ``run_id:position`` (and journaled at that position, so a replay
does not send again; a kill between the store and the journal record finds
the key and stores nothing new); an HTTP sender may pass an
Idempotency-Key. ``recv`` is a durable wait (ops.durable_wait) over the
run's messages of one topic in arrival (seq) order; the message's seq is
journaled with the result, so each is taken once and a replay returns the
same one.

An event is not stored apart: ``set_event`` journals an ``ok`` step named
``fm.set_event(<key>)`` whose result is the value (run_steps shows it), and
the latest one by position is the event's value (Journal.run_event).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import NoSuchRun, RunFinished, UsageError
from .context import CURRENT_RUN, RunContext, registry, replay
from .events import check_name
from .journal import Journal
from .ops import durable_wait
from .run_events import check_open

KIND = "message"


def send(run_id: str, topic: str, data: Any = None, *, idempotency_key: str | None = None) -> None:
    """Send ``data`` to run ``run_id`` under ``topic``; its ``fm.recv(topic)``
    takes it (a message sent before the receiver waits is kept). Inside a
    flow the send is a journaled step, done once across replays and kills.
    Raises NoSuchRun, or RunFinished for a run that has finished."""
    check_name(topic, "topic")
    ctx = CURRENT_RUN.get()
    if ctx is None:
        deliver(run_id, topic, data, idempotency_key)
        return
    p = ctx.take()
    opname = f"fm.send({topic})"
    done, _ = replay(ctx.check(p, opname))
    if done:
        return
    try:
        seq, _dup = deliver(run_id, topic, data, idempotency_key or f"{ctx.run.id}:{p}",
                            sender=ctx.run.id)
    except (NoSuchRun, RunFinished) as exc:  # final: a replay raises it again, sends nothing
        ctx.record(p, opname, "failed", 1, error=Journal.encode_error(exc))
        raise
    ctx.record(p, opname, "ok", 1,
               result=registry().journal.encode({"run_id": run_id, "seq": seq}, opname))


def deliver(run_id: str, topic: str, data: Any = None, key: str | None = None,
            sender: str | None = None) -> tuple[int, bool]:
    """Store a message for ``run_id`` once per ``key`` and wake the run if
    it waits here: (its seq, whether it had been stored already)."""
    check_name(topic, "topic")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise UsageError(f"idempotency key {key!r}: expected 1-200 characters")
    run = check_open(run_id, f"a message on topic {topic!r}")
    j = registry().journal
    # Plain JSON stays JSON in the payload (SQL sees it); anything else is a
    # pickle marker that recv decodes, as step results are stored.
    value = json.loads(j.encode(data, f"the message on topic {topic!r} to run {run_id}",
                                fix="send plain data (dict, list, str, numbers) or an object "
                                    "cloudpickle can serialise"))
    store = j.store
    with store.transaction():
        found = key is not None and store.query(
            f"SELECT seq FROM fm_events WHERE kind = '{KIND}' AND run_id = ?"
            " AND payload->>'key' = ? LIMIT 1", [run_id, key]).rows
        seq = found[0][0] if found else store.append_event(KIND, run_id=run_id, payload={
            "topic": topic, "data": value, "key": key, "from_run": sender})
    if run is not None:
        run.wake()
    return seq, bool(found)


def first_fresh(ctx: RunContext, topic: str) -> list[tuple[int, Any]]:
    """[(seq, data)] of the oldest message on ``topic`` to the run of
    ``ctx`` that it has not taken, or []. A topic's messages are taken in
    seq order, and a seq becomes visible with its commit (the store hands
    it out inside the lock it commits under), so the untaken ones are those
    after the highest seq taken: one row comes back, and only it is
    decoded, however many came before (DuckDB still scans the table)."""
    j = registry().journal
    res = j.store.query(
        f"SELECT seq, CAST(payload->'data' AS VARCHAR) FROM fm_events WHERE kind = '{KIND}'"
        " AND run_id = ? AND payload->>'topic' = ? AND seq > ? ORDER BY seq LIMIT 1",
        [ctx.run.id, topic, ctx.topic_seq.get(topic, 0)])
    return [(seq, j.decode(text) if text is not None else None) for seq, text in res.rows]


def recv(topic: str, timeout: float | None = None) -> Any:
    """The oldest message on ``topic`` this run has not taken yet, waiting
    durably for one (the wait survives kill -9; a replay returns the same
    message). Timeout after ``timeout`` seconds. Awaitable in async flows."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        raise UsageError(f"fm.recv({topic!r}) works in a flow body only: messages are sent to a "
                         "run (inside a step, return what you need and call fm.recv in the flow); "
                         "from a cell, send one with fm.send(run_id, topic, data)")
    check_name(topic, "topic")
    return durable_wait(ctx, f"fm.recv({topic})", (KIND, topic), timeout,
                        find=lambda: first_fresh(ctx, topic))


def set_event(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for this run: ``run.get_event(key)``
    (or GET /runs/<id>/events/<key>) answers the latest value set. Journaled:
    a replay does not set it again."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        raise UsageError(f"fm.set_event({key!r}) works in a flow body only: an event belongs to "
                         "a run (inside a step, return the value and set it in the flow)")
    check_name(key, "event key")
    p = ctx.take()
    opname = f"fm.set_event({key})"
    done, _ = replay(ctx.check(p, opname))
    if done:
        return
    ctx.record(p, opname, "ok", 1, detail={"key": key}, result=registry().journal.encode(
        value, f"the value of event {key!r} of run {ctx.run.id}"))
    ctx.run.wake()  # get_event waiters in this process look again
