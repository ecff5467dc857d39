"""The flow routes of the loopback HTTP API (spec: "HTTP endpoint"):
callbacks, signals, starting runs and reading them. Whoever starts the
endpoint passes ROUTES to it; the work is done on a worker thread, so the
endpoint's loop never waits on the history."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import tornado.web

from ..endpoint import ApiHandler
from ..errors import FlowError, NoSuchFlow, NoSuchRun, RunFinished
from .context import registry
from .ops import deliver_callback
from .run import deliver_signal

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


class StartRunHandler(ApiHandler):
    async def post(self, name: str) -> None:
        body = self.json_body()
        if body is None:
            body = {}
        if not isinstance(body, dict) or not isinstance(body.get("args", []), list) \
                or not isinstance(body.get("kwargs", {}), dict):
            raise tornado.web.HTTPError(400, reason='expected {"args": [...], "kwargs": {...}}')

        def start() -> str:
            reg = registry()
            fl = reg.flows.get(name)
            if fl is None:
                raise NoSuchFlow(name, reg.flows)
            return fl.start(*body.get("args", []), **body.get("kwargs", {})).id

        run_id = await _off_loop(start)
        self.send_json({"run_id": run_id, "flow": name}, status=201)


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
                            "parent_run": row["parent_run"], "parent_position": row["parent_position"]}
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
    (r"/flows/([^/]{1,200})/runs", StartRunHandler),
    (r"/runs/" + _ID, RunHandler),
)
