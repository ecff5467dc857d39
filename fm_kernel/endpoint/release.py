"""``POST /worker/release``: served by `fm worker` only (its endpoint file
says ``"role": "worker"``). A kernel that finds the worker holding its
history asks for it here (record/handover.py); the worker answers 202, from
then on answers every other request 503 with ``Retry-After``, and hands the
history over (cli/handover.py). It needs the token, like every route that
changes what runs."""

from __future__ import annotations

import os

import tornado.web

from . import ApiHandler


class ReleaseHandler(ApiHandler):
    during_hand_over = True  # a second ask while the first is under way: 202 again

    def post(self) -> None:
        body = self.json_body()
        asker = body if isinstance(body, dict) else {}
        release = self.api.on_release
        if release is None and self.api.role == "worker":  # its first instants: ask again
            raise tornado.web.HTTPError(503, reason="`fm worker` is starting; ask again")
        if release is None:  # a kernel's endpoint: it has no worker loop to hand over from
            raise tornado.web.HTTPError(404, reason="only `fm worker` hands its history over")
        self.api.draining = True
        release(asker)
        self.send_json({"releasing": True, "pid": os.getpid(), "port": self.api.port}, status=202)


ROUTES: tuple[tuple[str, type], ...] = (
    (r"/worker/release", ReleaseHandler),
)
