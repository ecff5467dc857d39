"""Named events (spec: "HTTP endpoint", ``POST /events/<name>``): a webhook,
a file arriving, anything an external system announces under a name.

An event is stored once per (name, delivery id) as an ``event_received``
row of ``fm_events`` (the ``received_events`` view), committed to DuckDB
before the sender is answered, like signals: a redelivery with the same id
stores nothing and starts nothing new. Then every flow defined with
``on=name`` gets a run whose id is made from the delivery id (start_once),
so the answer to a redelivery names the same runs.

``fm.wait_event(name, match=...)`` inside a flow takes the first event of
that name received since the run started, matching ``match`` and not taken
by an earlier wait of the run; the event's seq is journaled with the wait's
result, so across kill -9 each event reaches a run's waits once.

A source's secret (for signed webhooks, event_routes.py) comes from
``fm.event_source(name, secret=...)`` in this process, else from the
environment variable ``FM_EVENT_SECRET_<NAME>`` (the name upper-cased, every
other character than a letter or digit made ``_``), which ``fm worker`` reads
as well as a kernel does.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from typing import Any, Callable, Sequence

from ..errors import FlowError, Timeout, UsageError
from .context import CURRENT_RUN, RunContext, registry, replay
from .journal import Journal
from .parking import can_park, park
from .runs import start_once

KIND = "event_received"
NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def check_name(name: Any, what: str = "event") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"{what} name {name!r} is not allowed; use 1-200 letters, digits, "
                         "'.', ':', '_' or '-'")
    return name


def env_name(name: str) -> str:
    """The environment variable that holds the secret of source ``name``."""
    return "FM_EVENT_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def event_source(name: str, secret: str | None = None) -> str:
    """Declare the event source ``name``; with ``secret``, ``POST
    /events/<name>`` also accepts a body signed with it as GitHub signs
    (``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``)
    instead of the endpoint token. Returns the URL to give the sender.
    The secret lives in this process only; for ``fm worker`` set
    ``FM_EVENT_SECRET_<NAME>`` instead (env_name)."""
    check_name(name, "event source")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise UsageError(f"fm.event_source({name!r}): secret must be a non-empty string")
    reg = registry()
    with reg.lock:
        reg.event_secrets[name] = secret
    try:
        return f"{reg.base_url()}/events/{name}"
    except FlowError:
        return f"/events/{name}"


def secret_of(name: str) -> str | None:
    reg = registry()
    secret = reg.event_secrets.get(name)
    return secret if secret else (os.environ.get(env_name(name)) or None)


def receive(name: str, data: Any, delivery_id: str | None = None,
            source: str = "python") -> dict[str, Any]:
    """Store the event once and start its flows' runs; what POST
    /events/<name> answers: {event, delivery_id, seq, duplicate, runs}."""
    check_name(name)
    if delivery_id is not None and (not isinstance(delivery_id, str) or not delivery_id
                                    or len(delivery_id) > 200):
        raise UsageError(f"delivery id {delivery_id!r}: expected 1-200 characters")
    delivery_id = delivery_id or uuid.uuid4().hex
    reg = registry()
    store = reg.journal.store
    with store.transaction():  # one event per (name, delivery id), however many ask at once
        found = store.query(f"SELECT seq FROM fm_events WHERE kind = '{KIND}' AND"
                            " payload->>'name' = ? AND payload->>'delivery_id' = ? LIMIT 1",
                            [name, delivery_id]).rows
        seq = found[0][0] if found else store.append_event(KIND, payload={
            "name": name, "source": source, "delivery_id": delivery_id, "data": data})
    # On a redelivery too: a kill between storing the event and starting its
    # runs leaves them to the sender's retry; start_once makes that idempotent.
    runs = [start_for(fl, name, delivery_id, data) for fl in _flows_on(name)]
    _wake_all()
    return {"event": name, "delivery_id": delivery_id, "seq": seq, "duplicate": bool(found),
            "runs": runs}


def receive_many(name: str, source: str, items: list[tuple[str, Any]],
                 extra: Sequence[tuple[str, Any, Any, dict]] = (),
                 guard: Callable[[], bool] | None = None) -> int | None:
    """Store the events ``name`` of ``items`` ((delivery id, data) pairs)
    not stored before, and the ``extra`` rows (kind, step, run_id, payload),
    in ONE transaction; then start the runs of every flow on ``name`` for
    each item. ``guard`` runs inside the transaction first: False stores
    nothing and answers None (a poll source whose cursor moved meanwhile);
    it holds the store's lock, so it must take no other lock.
    Answers how many events were new. What the sources (sources.py) call."""
    check_name(name)
    store = registry().journal.store
    with store.transaction():
        if guard is not None and not guard():
            return None
        stored = {r[0] for r in store.query(
            f"SELECT payload->>'delivery_id' FROM fm_events WHERE kind = '{KIND}' AND"
            " payload->>'name' = ? AND list_contains(?, payload->>'delivery_id')",
            [name, [d for d, _ in items]]).rows} if items else set()
        new = [(KIND, None, None, {"name": name, "source": source, "delivery_id": d, "data": data})
               for d, data in items if d not in stored]
        if new or extra:
            store.append_events(new + list(extra))
    flows = _flows_on(name)
    for d, data in items:  # stored before too: a kill may have come before its runs started
        for fl in flows:
            start_for(fl, name, d, data)
    _wake_all()
    return len(new)


def _wake_all() -> None:
    reg = registry()
    with reg.lock:
        live = list(reg.runs.values())
    for run in live:  # waits look at the history when woken; cheap for those not waiting
        at = run.parked_at  # a run parked elsewhere would only replay to park again
        if at is None or at.startswith("fm.wait_event("):
            run.wake()


def _flows_on(name: str) -> list[Any]:
    """The flows defined with on=name, or with a source (sources.py) delivering as ``name``."""
    reg = registry()
    with reg.lock:
        return [fl for fl in reg.flows.values()
                if getattr(fl, "on", None) == name
                or getattr(getattr(fl, "on", None), "event", None) == name]


def run_id_for(fl: Any, name: str, delivery_id: str) -> str:
    """The id of ``fl``'s run for one delivery: the same for every redelivery."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"fm-event:{fl.name}:{name}:{delivery_id}").hex


def start_for(fl: Any, name: str, delivery_id: str, data: Any) -> str:
    return start_once(fl, run_id_for(fl, name, delivery_id), (data,), {})[0].id


def send_event(name: str, data: Any = None, delivery_id: str | None = None) -> dict[str, Any]:
    """Deliver a named event from Python (as ``POST /events/<name>`` does)."""
    if CURRENT_RUN.get() is not None:
        raise FlowError(f"fm.send_event({name!r}) inside a flow would deliver again on replay; "
                        "send it from a @fm.step, or with a delivery_id made from the run")
    return receive(name, data, delivery_id)


def _matches(data: Any, match: dict[str, Any] | None) -> bool:
    if not match:
        return True
    return isinstance(data, dict) and all(k in data and data[k] == v for k, v in match.items())


def wait_event(name: str, match: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
    """Wait durably for the event ``name`` (its JSON payload is returned):
    the first received since this run started whose payload has every
    key/value of ``match``, not taken by an earlier wait of the run; an event
    that came before the wait counts. Timeout after ``timeout`` seconds.
    Awaitable in async flows."""
    ctx = CURRENT_RUN.get()
    if ctx is None:
        raise FlowError(f"fm.wait_event({name!r}) works inside a flow only: a wait is a step of a run")
    check_name(name)
    if match is not None and not isinstance(match, dict):
        raise UsageError(f"fm.wait_event({name!r}): match must be a dict of payload keys to values")
    opname = f"fm.wait_event({name})"
    p = ctx.take()
    rec = ctx.check(p, opname)
    done, value = replay(rec)
    if ctx.is_async:
        import asyncio

        if done:
            return asyncio.to_thread(lambda: value)
        return asyncio.to_thread(_wait, ctx, p, rec, opname, name, match, timeout)
    return value if done else _wait(ctx, p, rec, opname, name, match, timeout)


def received(name: str, since: float) -> list[tuple[int, Any]]:
    """(seq, payload) of the events ``name`` received at or after ``since``."""
    res = registry().journal.store.query(
        f"SELECT seq, payload->'data' FROM fm_events WHERE kind = '{KIND}'"
        " AND payload->>'name' = ? AND epoch(\"at\") >= ? ORDER BY seq", [name, since])
    return [(s, json.loads(d) if d is not None else None) for s, d in res.rows]


def _wait(ctx: RunContext, p: int, rec: dict[str, Any] | None, opname: str, name: str,
          match: dict[str, Any] | None, timeout: float | None) -> Any:
    run, j = ctx.run, registry().journal
    if rec is not None and rec["status"] == "waiting":
        deadline = rec["detail"].get("deadline")
    else:
        deadline = time.time() + timeout if timeout is not None else None
        ctx.record(p, opname, "waiting", detail={"deadline": deadline, "event": name, "match": match})
    run.set_status("waiting")
    while True:
        wakes = run.wakes
        for seq, data in received(name, run.started_at):
            if seq not in ctx.consumed and _matches(data, match):
                ctx.record(p, opname, "ok", 1, result=j.encode(data, opname),
                           detail={"event_seq": seq, "event": name})
                run.set_status("running")
                return data
        run.check_cancel()
        left = None if deadline is None else deadline - time.time()
        if left is not None and left <= 0:
            err = Timeout(f"run {run.id} of {run.flow_name!r} waited {timeout}s for event "
                          f"{name!r}{f' matching {match}' if match else ''} at position {p} "
                          "and none came")
            ctx.record(p, opname, "failed", 1, error=Journal.encode_error(err))
            run.set_status("running")
            raise err
        if can_park(ctx, left):  # raises; the event's delivery or the deadline executes it again
            park(ctx, deadline, wakes, f"{opname} at position {p}")
        run.wait_wake(wakes, 5.0 if left is None else min(left, 5.0))
