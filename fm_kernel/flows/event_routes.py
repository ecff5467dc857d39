"""``POST /events/<name>`` (events.py): a named event from anything that
speaks HTTP. Either the endpoint token (``Authorization: token <t>``), or,
for a source with a secret, GitHub's signature: ``X-Hub-Signature-256:
sha256=<hex HMAC-SHA256 of the raw body>``, compared in constant time. The
delivery id is ``X-GitHub-Delivery``, ``X-Delivery-Id`` or
``Idempotency-Key`` (the first given); a redelivery stores and starts
nothing new and answers as the first delivery did, with ``duplicate``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import tornado.web

from ..endpoint import ApiHandler
from ..errors import FlowError, UsageError
from .events import receive, secret_of

DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Delivery-Id", "Idempotency-Key")
SIGNATURE_HEADER = "X-Hub-Signature-256"


def signed(secret: str, body: bytes, header: str) -> bool:
    """True if ``header`` is ``sha256=<hex>`` of ``body`` under ``secret``."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.strip().lower().encode("utf-8", "replace"), expected.encode())


class EventHandler(ApiHandler):
    needs_token = False  # the token or the source's signature, checked in post()

    def _source(self, name: str) -> str:
        """'token' or 'signature': how this request proved itself (else 401)."""
        given = self.request.headers.get("Authorization", "")
        if given and hmac.compare_digest(given.encode("utf-8", "replace"),
                                         f"token {self.api.token}".encode()):
            return "token"
        secret = secret_of(name)
        header = self.request.headers.get(SIGNATURE_HEADER)
        if secret is None:
            raise tornado.web.HTTPError(401, reason=(
                f"event source {name!r} has no secret here, so only the endpoint token is "
                "accepted: send 'Authorization: token <t>', or configure a secret with "
                "fm.event_source(name, secret=...) or FM_EVENT_SECRET_<NAME>"))
        if not header:
            raise tornado.web.HTTPError(401, reason=f"missing {SIGNATURE_HEADER} header (sha256=<hex "
                                        "HMAC-SHA256 of the raw body with the source's secret>)")
        if not signed(secret, self.request.body or b"", header):
            raise tornado.web.HTTPError(401, reason=f"{SIGNATURE_HEADER} does not match the body "
                                        f"signed with the secret of event source {name!r}")
        return "signature"

    async def post(self, name: str) -> None:
        source = self._source(name)
        data = self.json_body()
        delivery = next((self.request.headers[h] for h in DELIVERY_HEADERS
                         if self.request.headers.get(h)), None)

        def deliver() -> dict:
            try:
                return receive(name, data, delivery, source=f"http:{source}")
            except UsageError as exc:
                raise tornado.web.HTTPError(400, reason=str(exc)) from None
            except FlowError as exc:
                raise tornado.web.HTTPError(409, reason=str(exc)) from None

        got = await asyncio.get_running_loop().run_in_executor(None, deliver)
        self.send_json(got, status=200 if got["duplicate"] else 201)


ROUTES: tuple[tuple[str, type], ...] = (
    (r"/events/([^/]{1,200})", EventHandler),
)
