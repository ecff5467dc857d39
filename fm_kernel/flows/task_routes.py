"""The task routes of the endpoint (tasks.py; the protocol, with curl, is in
docs/integrations.md). Token auth like every route but callbacks.

They run on the endpoint's loop itself, with no hop to a worker thread: the
board (task_board.py) answers from memory and records with one write(2),
microseconds, where a hop to a thread and back costs a GIL hand-over each
way and, with 8 busy workers, most of a task's time. Only the first use of
the board, which reads the history, and every call under FM_FSYNC=1 (an
fdatasync per record) go to a thread.

A claim is a long poll: when its queue has no task it leaves a one-shot
wake-up with the board, registered in the same look as the claim, and
sleeps until a task is queued there (or re-queued by a failure or an
expired lease) or its wait is over."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import tornado.web

from ..endpoint import LeanHandler, parse_json
from ..endpoint.lean import Watch
from ..errors import LeaseLost, NoSuchTask
from .task_board import MAX_TASKS, TaskBoard, board, board_ready

MAX_WAIT = 300.0  # seconds one claim may wait
LOOK = 1.0  # seconds a waiting claim sleeps at most before it looks again
ID = r"([A-Za-z0-9_\-]{1,128})"  # task ids (as run ids in routes.py)


async def _on_board(fn: Callable[[TaskBoard], Any]) -> Any:
    """``fn(board)``, on the loop; or on a thread for the first use (the board
    is built from a read of the history) and when every record is also
    fdatasync-ed (FM_FSYNC=1: milliseconds each, and the loop serves every
    route). NoSuchTask is answered 404, LeaseLost 409."""
    b = board_ready()
    if b is None or b.journal.fsync:
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: _answered(fn, b or board()))
    return _answered(fn, b)


def _answered(fn: Callable[[TaskBoard], Any], b: TaskBoard) -> Any:
    try:
        return fn(b)
    except NoSuchTask as exc:
        raise tornado.web.HTTPError(404, reason=str(exc)) from None
    except LeaseLost as exc:
        raise tornado.web.HTTPError(409, reason=str(exc)) from None


def _settle(fut: asyncio.Future, why: str) -> None:
    if not fut.done():
        fut.set_result(why)


def _body(api: Any, body: bytes, *required: str) -> dict[str, Any]:
    got = parse_json(api, body)
    if not isinstance(got, dict) or any(k not in got for k in required):
        raise tornado.web.HTTPError(400, reason=f"expected a JSON object with {', '.join(required)}")
    return got


def _claim_args(body: Any) -> tuple[str, float, int | None]:
    """(worker, wait, max_tasks or None) of a claim's body, or a 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise tornado.web.HTTPError(400, reason='expected {"worker": "name", "wait": seconds}')
    worker, wait = body.get("worker") or "anonymous", body.get("wait", 0)
    if not isinstance(worker, str) or isinstance(wait, bool) or \
            not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
        raise tornado.web.HTTPError(400, reason=f"worker must be a name and wait a number of "
                                    f"seconds from 0 to {MAX_WAIT:g}")
    most = body.get("max_tasks")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int)
                             or not 1 <= most <= MAX_TASKS):
        raise tornado.web.HTTPError(400, reason=f"max_tasks must be a whole number from 1 to "
                                    f"{MAX_TASKS} (or left out for one task)")
    return worker[:200], wait, most


class ClaimHandler(LeanHandler):
    """POST /queues/<queue>/claim {"worker": name, "wait": seconds,
    "max_tasks": n}: a task (200), or with ``max_tasks`` {"tasks": [up to n]};
    after ``wait`` seconds with none, 204. A worker that goes away while it
    waits takes no task (one claimed for it would wait out its lease)."""

    async def post(self, queue: str) -> None:
        await self.serve(queue)

    @classmethod
    async def answer(cls, api: Any, args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        queue, = args
        worker, wait, most = _claim_args(parse_json(api, body) or {})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not watch.gone:
            watch.woken = woken = loop.create_future()

            def wake(woken: asyncio.Future = woken) -> None:  # from any thread
                try:
                    loop.call_soon_threadsafe(_settle, woken, "woken")
                except RuntimeError:  # the endpoint's loop has stopped
                    pass

            got = await _on_board(lambda b: b.claim_many(queue, worker, most or 1,
                                                         wake if wait > 0 else None))
            if got:
                return 200, {"tasks": got} if most is not None else got[0]
            left = deadline - loop.time()
            if left > 0:
                # then look again (once more at the end); at least every LOOK
                # seconds, on the board of the moment: the history may have
                # been handed over, and its wake-up left with the old board
                timer = loop.call_later(min(left, LOOK), _settle, woken, "look")
                why = await woken
                timer.cancel()
                if why == "woken":  # the board let go of the wake-up when it called it
                    continue
            if wait > 0:
                await _on_board(lambda b: b.unwait(queue, wake))
            if left <= 0:
                break
        return 204, None


class _LeaseHandler(LeanHandler):
    """POST /tasks/<id>/<verb> {"lease": ..., ...}: ``act`` on the board."""

    async def post(self, task_id: str) -> None:
        await self.serve(task_id)

    @classmethod
    async def answer(cls, api: Any, args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        task_id, = args
        got = _body(api, body, "lease")
        return 200, await _on_board(lambda b: cls.act(b, task_id, got))

    @staticmethod
    def act(b: TaskBoard, task_id: str, got: dict[str, Any]) -> Any:
        raise NotImplementedError


class HeartbeatHandler(_LeaseHandler):
    @staticmethod
    def act(b: TaskBoard, task_id: str, got: dict[str, Any]) -> Any:
        return b.heartbeat(task_id, got["lease"])


class CompleteHandler(_LeaseHandler):
    @staticmethod
    def act(b: TaskBoard, task_id: str, got: dict[str, Any]) -> Any:
        stored = b.complete(task_id, got["lease"], got.get("result"))
        return {"ok": True, "task_id": task_id, "duplicate": not stored}


class FailHandler(_LeaseHandler):
    @staticmethod
    def act(b: TaskBoard, task_id: str, got: dict[str, Any]) -> Any:
        status = b.fail(task_id, got["lease"], got.get("error"), bool(got.get("retryable", True)))
        return {"ok": True, "task_id": task_id, "status": status}


class CompleteManyHandler(LeanHandler):
    """POST /tasks/complete {"tasks": [{"task_id", "lease", "result"}, ...]}:
    several completions in one request and one write; each gets its own
    outcome, as the one-task route would answer it (200, 404 or 409)."""

    async def post(self) -> None:
        await self.serve()

    @classmethod
    async def answer(cls, api: Any, args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        items = _body(api, body, "tasks")["tasks"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_TASKS or any(
                not isinstance(i, dict) or not isinstance(i.get("task_id"), str) or "lease" not in i
                for i in items):
            raise tornado.web.HTTPError(400, reason=f'tasks must be a list of 1 to {MAX_TASKS} '
                                        '{"task_id": ..., "lease": ..., "result": ...}')
        got = await _on_board(lambda b: b.complete_many(
            [(i["task_id"], i["lease"], i.get("result")) for i in items]))
        return 200, {"tasks": [
            {"task_id": i["task_id"], "status": 200, "duplicate": not g} if isinstance(g, bool) else
            {"task_id": i["task_id"], "status": 404 if isinstance(g, NoSuchTask) else 409,
             "error": str(g)} for i, g in zip(items, got)]}


class TaskHandler(LeanHandler):
    async def get(self, task_id: str) -> None:
        await self.serve(task_id)

    @classmethod
    async def answer(cls, api: Any, args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        t = await _on_board(lambda b: b.get(args[0]))
        return 200, {"task_id": t.task_id, "run_id": t.run_id, "position": t.position,
                     "queue": t.queue, "status": t.status, "attempt": t.attempt,
                     "worker": t.worker, "payload": t.payload, "result": t.result,
                     "error": t.error}


ROUTES: tuple[tuple[str, type], ...] = (
    (r"/queues/([^/]{1,200})/claim", ClaimHandler),
    (r"/tasks/complete", CompleteManyHandler),  # before /tasks/<id>, which it would match
    (r"/tasks/" + ID, TaskHandler),
    (r"/tasks/" + ID + r"/heartbeat", HeartbeatHandler),
    (r"/tasks/" + ID + r"/complete", CompleteHandler),
    (r"/tasks/" + ID + r"/fail", FailHandler),
)
