"""The task routes of the endpoint (tasks.py; the protocol, with curl, is in
docs/integrations.md). Token auth like every route but callbacks. A claim is
a long poll on the endpoint's loop: it looks at the board in memory when a
task is queued (or every 250 ms, for leases that ran out) and takes a worker
thread only to record a claim."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import tornado.web

from ..endpoint import ApiHandler
from ..errors import LeaseLost, NoSuchTask
from .tasks import board

MAX_WAIT = 300.0  # seconds one claim may wait
ID = r"([A-Za-z0-9_\-]{1,128})"  # task ids (as run ids in routes.py)


async def _task_call(fn: Callable[[], Any]) -> Any:
    def call() -> Any:
        try:
            return fn()
        except NoSuchTask as exc:
            raise tornado.web.HTTPError(404, reason=str(exc)) from None
        except LeaseLost as exc:
            raise tornado.web.HTTPError(409, reason=str(exc)) from None

    return await asyncio.get_running_loop().run_in_executor(None, call)


def _body(h: ApiHandler, *required: str) -> dict[str, Any]:
    body = h.json_body()
    if not isinstance(body, dict) or any(k not in body for k in required):
        raise tornado.web.HTTPError(400, reason=f"expected a JSON object with {', '.join(required)}")
    return body


class ClaimHandler(ApiHandler):
    """POST /queues/<queue>/claim {"worker": name, "wait": seconds}: a task
    (200) or, after ``wait`` seconds with none, 204."""

    async def post(self, queue: str) -> None:
        body = self.json_body() or {}
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, reason='expected {"worker": "name", "wait": seconds}')
        worker, wait = body.get("worker") or "anonymous", body.get("wait", 0)
        if not isinstance(worker, str) or isinstance(wait, bool) or \
                not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
            raise tornado.web.HTTPError(400, reason=f"worker must be a name and wait a number of "
                                        f"seconds from 0 to {MAX_WAIT:g}")
        b = await _task_call(board)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        queued = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(queued.set)
            except RuntimeError:  # the endpoint's loop has stopped
                pass

        b.listeners.add(wake)
        try:
            while True:
                queued.clear()  # before looking: a task queued after the look sets it
                if b.has_work(queue):
                    got = await _task_call(lambda: b.claim(queue, worker[:200]))
                    if got is not None:
                        return self.send_json(got)
                left = deadline - loop.time()
                if left <= 0 or self.request.connection.stream.closed():
                    self.set_status(204)
                    return self.finish()
                try:  # woken by a queued task; else look again (a lease may have run out)
                    await asyncio.wait_for(queued.wait(), min(left, 0.25))
                except asyncio.TimeoutError:
                    pass
        finally:
            b.listeners.discard(wake)


class HeartbeatHandler(ApiHandler):
    async def post(self, task_id: str) -> None:
        body = _body(self, "lease")
        self.send_json(await _task_call(lambda: board().heartbeat(task_id, body["lease"])))


class CompleteHandler(ApiHandler):
    async def post(self, task_id: str) -> None:
        body = _body(self, "lease")
        stored = await _task_call(lambda: board().complete(task_id, body["lease"], body.get("result")))
        self.send_json({"ok": True, "task_id": task_id, "duplicate": not stored})


class FailHandler(ApiHandler):
    async def post(self, task_id: str) -> None:
        body = _body(self, "lease")
        retryable = body.get("retryable", True)
        status = await _task_call(lambda: board().fail(task_id, body["lease"], body.get("error"),
                                                       bool(retryable)))
        self.send_json({"ok": True, "task_id": task_id, "status": status})


class TaskHandler(ApiHandler):
    async def get(self, task_id: str) -> None:
        t = await _task_call(lambda: board().get(task_id))
        self.send_json({"task_id": t.task_id, "run_id": t.run_id, "position": t.position,
                        "queue": t.queue, "status": t.status, "attempt": t.attempt,
                        "worker": t.worker, "payload": t.payload, "result": t.result,
                        "error": t.error})


ROUTES: tuple[tuple[str, type], ...] = (
    (r"/queues/([^/]{1,200})/claim", ClaimHandler),
    (r"/tasks/" + ID, TaskHandler),
    (r"/tasks/" + ID + r"/heartbeat", HeartbeatHandler),
    (r"/tasks/" + ID + r"/complete", CompleteHandler),
    (r"/tasks/" + ID + r"/fail", FailHandler),
)
