"""The flow routes of the loopback HTTP API (spec: "HTTP endpoint"):
callbacks, signals, messages and events (messages.py), starting runs (once
per run id or Idempotency-Key), listing, reading, waiting for and
cancelling them. Whoever starts the endpoint passes ROUTES to it; the work
is done on a worker thread, so the endpoint's loop never waits on the
history."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Callable

import tornado.web

from ..endpoint import ApiHandler
from ..errors import FlowError, NoSuchFlow, NoSuchRun, RunFinished, UsageError
from .context import registry
from .deadlines import validate_timeout
from .journal import FINISHED_STATUSES
from .messages import deliver as deliver_message
from .ops import deliver_callback
from .queues import enqueue_once, live_queue
from .run import get_run
from .run_events import deliver_signal, event_state
from .runs import start_once

_ID = r"([A-Za-z0-9_\-]{1,128})"


async def _off_loop(fn: Callable[[], Any]) -> Any:
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn)
    except NoSuchRun as exc:
        raise tornado.web.HTTPError(404, reason=str(exc)) from None
    except NoSuchFlow as exc:
        raise tornado.web.HTTPError(404, reason=str(exc)) from None
    except RunFinished as exc:  # the request was fine; the run is past taking it
        raise tornado.web.HTTPError(409, reason=str(exc)) from None
    except UsageError as exc:
        raise tornado.web.HTTPError(400, reason=str(exc)) from None


class CallbackHandler(ApiHandler):
    needs_token = False  # the id (192 random bits) is the capability

    async def post(self, cb_id: str) -> None:
        body = self.json_body()

        def deliver() -> bool:
            try:
                return deliver_callback(cb_id, body)
            except FlowError:
                raise tornado.web.HTTPError(404, reason="no such callback") from None

        stored = await _off_loop(deliver)
        self.send_json({"ok": True, "callback_id": cb_id, "duplicate": not stored})


class SignalHandler(ApiHandler):
    async def post(self, run_id: str, name: str) -> None:
        body = self.json_body()
        seq = await _off_loop(lambda: deliver_signal(run_id, name, body))
        self.send_json({"ok": True, "run_id": run_id, "signal": name, "seq": seq})


class MessageHandler(ApiHandler):
    """POST /runs/<id>/messages/<topic>: the JSON body is the message; an
    Idempotency-Key header stores it once however often it is posted."""

    async def post(self, run_id: str, topic: str) -> None:
        body = self.json_body()
        key = self.request.headers.get("Idempotency-Key")
        seq, dup = await _off_loop(lambda: deliver_message(run_id, topic, body,
                                                           f"http:{key}" if key else None))
        self.send_json({"ok": True, "run_id": run_id, "topic": topic, "seq": seq,
                        "duplicate": dup})


class EventHandler(ApiHandler):
    """GET /runs/<id>/events/<key>?timeout=S: 200 with the latest value the
    run set; after S seconds (default 0) without one, 202 while the run goes
    on, 404 once it has finished (it never will set it). Waiters hold no
    thread: the loop looks again when the live run wakes, or every second."""

    async def get(self, run_id: str, key: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _number_arg(self, "timeout", 0, 0, 600)
        while True:
            live = registry().runs.get(run_id)
            since = live.wakes if live is not None else 0
            status, text = await _off_loop(lambda: event_state(run_id, key))
            info = {"run_id": run_id, "key": key, "status": status}
            if text is not None:  # as stored: plain JSON, or a marker for a pickled value
                return self.send_json({**info, "set": True, "value": json.loads(text)})
            if status in FINISHED_STATUSES:
                raise tornado.web.HTTPError(404, reason=f"run {run_id} finished ({status}) without "
                                            f"setting event {key!r}; it never will")
            if loop.time() >= deadline:
                return self.send_json({**info, "set": False, "value": None}, status=202)
            until = min(deadline, loop.time() + 1.0)
            while loop.time() < until and (live is None or live.wakes == since):
                await asyncio.sleep(0.05)


class StartRunHandler(ApiHandler):
    async def post(self, name: str) -> None:
        body = self.json_body()
        if body is None:
            body = {}
        if not isinstance(body, dict) or not isinstance(body.get("args", []), list) \
                or not isinstance(body.get("kwargs", {}), dict):
            raise tornado.web.HTTPError(400, reason='expected {"args": [...], "kwargs": {...}}')

        run_id = body.get("run_id")
        key = self.request.headers.get("Idempotency-Key")
        if run_id is None and key:  # any text: the run id is derived from it
            run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"fm-start:{name}:{key}").hex

        def start() -> tuple[str, bool]:
            reg = registry()
            fl = reg.flows.get(name)
            if fl is None:
                raise NoSuchFlow(name, reg.flows)
            limit = validate_timeout(body.get("timeout"), name, f"POST /flows/{name}/runs")
            queue = body.get("queue")
            if queue is not None:  # enqueued there (queues.py); 400 for a queue not defined here
                if not isinstance(queue, str):
                    raise UsageError(f'"queue": {queue!r}: expected the name of an fm.Queue')
                run, made = enqueue_once(live_queue(queue), fl, tuple(body.get("args", [])),
                                         body.get("kwargs", {}), run_id=run_id, timeout=limit)
                return run.id, made
            if run_id is None:
                return fl.start(*body.get("args", []), timeout=limit, **body.get("kwargs", {})).id, True
            run, started = start_once(fl, run_id, tuple(body.get("args", [])), body.get("kwargs", {}),
                                      limit)
            return run.id, started

        rid, started = await _off_loop(start)
        self.send_json({"run_id": rid, "flow": name, "started": started},
                       status=201 if started else 200)


class RunListHandler(ApiHandler):
    """GET /runs?flow=&status=&limit= (newest first)."""

    async def get(self) -> None:
        flow, status = self.get_argument("flow", None), self.get_argument("status", None)
        limit = _number_arg(self, "limit", 100, 1, 1000)
        rows = await _off_loop(lambda: registry().journal.find_runs(flow, status, int(limit)))
        self.send_json({"runs": rows})


class ResultHandler(ApiHandler):
    """GET /runs/<id>/result?wait=S: the run's info once it has finished, or
    202 with its info after S seconds. Waiters hold no thread: the loop looks
    at the live run (cheap) or the journal every 100 ms."""

    async def get(self, run_id: str) -> None:
        wait = _number_arg(self, "wait", 0, 0, 600)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            info = await _off_loop(lambda: run_info(run_id))
            if info["status"] in FINISHED_STATUSES:
                return self.send_json({**info, "finished": True})
            while loop.time() < deadline:
                await asyncio.sleep(0.1)
                live = registry().runs.get(run_id)
                if live is None or not live.executing or live.finished:
                    break  # not running here (or just ended): read the journal
            if loop.time() >= deadline:
                return self.send_json({**info, "finished": False}, status=202)


class CancelHandler(ApiHandler):
    async def post(self, run_id: str) -> None:
        def cancel() -> bool:
            return get_run(run_id).cancel()

        if not await _off_loop(cancel):
            info = await _off_loop(lambda: run_info(run_id))
            raise tornado.web.HTTPError(409, reason=f"run {run_id} has finished ({info['status']}); "
                                        "nothing to cancel")
        self.send_json({"run_id": run_id, "cancelled": True, "status": "cancelled"})


def _number_arg(h: ApiHandler, name: str, default: float, low: float, high: float) -> float:
    raw = h.get_argument(name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise tornado.web.HTTPError(400, reason=f"{name}={raw!r}: expected a number from {low:g} "
                                    f"to {high:g}")
    return value


class RunHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        self.send_json(await _off_loop(lambda: run_info(run_id)))


def run_info(run_id: str) -> dict[str, Any]:
    """What GET /runs/<id> answers (and `fm runs` can show)."""
    import json

    row = registry().journal.run_row(run_id)
    if row is None:
        raise NoSuchRun(run_id)
    info: dict[str, Any] = {"run_id": run_id, "flow": row["flow"], "status": row["status"],
                            "started_at": row["started_at"], "finished_at": row["finished_at"],
                            "forked_from_run": row["forked_from_run"],
                            "forked_from_step": row["forked_from_step"],
                            "parent_run": row["parent_run"], "parent_position": row["parent_position"],
                            "deadline": row["deadline"]}
    # The result as stored: plain JSON, or a marker for a pickled value.
    info["result"] = json.loads(row["result"]) if row["result"] else None
    if row["error"]:
        err = json.loads(row["error"])
        info["error"] = {"type": err.get("type"), "message": err.get("message")}
    else:
        info["error"] = None
    return info


# What an endpoint serves for flows; the runtime passes it to Endpoint(routes=...).
ROUTES: tuple[tuple[str, type], ...] = (
    (r"/callbacks/" + _ID, CallbackHandler),
    (r"/runs/" + _ID + r"/signals/([^/]{1,200})", SignalHandler),
    (r"/runs/" + _ID + r"/messages/([^/]{1,200})", MessageHandler),
    (r"/runs/" + _ID + r"/events/([^/]{1,200})", EventHandler),
    (r"/flows/([^/]{1,200})/runs", StartRunHandler),
    (r"/runs", RunListHandler),
    (r"/runs/" + _ID, RunHandler),
    (r"/runs/" + _ID + r"/result", ResultHandler),
    (r"/runs/" + _ID + r"/cancel", CancelHandler),
)
