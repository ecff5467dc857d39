"""The kernel's loopback HTTP API (spec: "HTTP endpoint").

It runs on its own thread and event loop, so a request is served while a
cell runs, and a slow or hostile client can only ever occupy that thread.
Port and token go to ``<history>.endpoint.json`` (mode 0600): whoever can
read that file may use the token; everyone else gets 401.

A history keeps its port: the first one chosen (or ``FM_ENDPOINT_PORT``) is
recorded in its ``fm_meta`` and asked for again by every later kernel, so a
callback URL handed out before a restart still arrives (see ``choose_port``).
``FM_PUBLIC_URL`` replaces the base of the URLs handed to other systems, for
those that reach this machine through a proxy or a tunnel.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import tornado.netutil
import tornado.web

from ..errors import FlowmetalError
from ..record import querying
from .lean import Routes, Watch
from .limits import GuardedServer, Limits, json_depth_exceeds, read_cap

log = logging.getLogger(__name__)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests go to the kernel's log, never to tornado.access: a root-level
    handler would print '404 POST ...' into whichever cell is running."""
    status = handler.get_status()
    log.log(logging.WARNING if status >= 500 else logging.DEBUG, "%d %s %.1f ms", status,
            handler._request_summary(), 1000.0 * handler.request.request_time())

MAX_BODY = 1 << 20  # spec default: 1 MiB
SQL_WORKERS = 2  # user queries run at once; DuckDB gives each up to 2 threads
SQL_QUEUE = 16   # running plus waiting; more are answered 429

RETRY_AFTER_S = 1  # what a 503 during a hand-over tells the sender to wait

PORT_META = "endpoint_port"  # fm_meta key: the port this history keeps


def endpoint_file(history: Path) -> Path:
    return Path(str(history) + ".endpoint.json")


def choose_port(kept: str | None) -> tuple[int | None, str | None]:
    """(the port to ask for, a notice): ``FM_ENDPOINT_PORT`` if set, else the
    history's kept port, else None (any free port, to be kept from then on)."""
    given = os.environ.get("FM_ENDPOINT_PORT", "").strip()
    if given:
        if given.isdigit() and 0 < int(given) < 65536:
            return int(given), None
        return _kept(kept), (f"flowmetal: FM_ENDPOINT_PORT={given!r} is not a port number "
                             "(1-65535); ignored")
    return _kept(kept), None


def _kept(kept: str | None) -> int | None:
    return int(kept) if kept and kept.isdigit() and 0 < int(kept) < 65536 else None


def check_host(host: str, allow_remote: bool) -> str:
    """Loopback only, unless explicitly allowed: the token is the only lock."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise FlowmetalError(
            f"refusing to serve the endpoint on {host}: it would expose the history and "
            "flows beyond this machine; set FM_ENDPOINT_ALLOW_REMOTE=1 to do it anyway"
        )
    return host


def admit(api: "Endpoint", handler: type, length: str | None, body_size: int,
          authorization: str) -> None:
    """Let a request to ``handler`` in, or raise the HTTPError that refuses it:
    503 during a hand-over, 413 past the body limit, 401 without the token.
    Once in, it is counted (``api.leave()`` when it has answered)."""
    if api.draining and not handler.during_hand_over:
        raise tornado.web.HTTPError(503, reason="this history is being handed over to another "
                                    "process; retry after the Retry-After seconds")
    if length is not None and (not length.isdigit() or int(length) > api.max_body):
        raise tornado.web.HTTPError(413, reason="body larger than the limit")
    if body_size > api.max_body:
        raise tornado.web.HTTPError(413, reason="body larger than the limit")
    if handler.needs_token:
        expected = f"token {api.token}"
        if not hmac.compare_digest(authorization.encode("utf-8", "replace"), expected.encode()):
            raise tornado.web.HTTPError(401, reason="missing or wrong token")
    api.enter()


def parse_json(api: "Endpoint", body: bytes | None) -> Any:
    """A request body's JSON, or a 400 naming what is wrong (not JSON, or
    nested deeper than the limit)."""
    body = body or b"null"
    limit = api.limits.max_json_depth
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise tornado.web.HTTPError(400, reason=f"body is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than the parser goes: far past the limit
        value = None
        deep = True
    else:  # fewer brackets than the limit cannot nest deeper than it
        deep = (body.count(b"[") + body.count(b"{") > limit
                and json_depth_exceeds(value, limit))
    if deep:
        raise tornado.web.HTTPError(400, reason=f"JSON body nests deeper than {limit} levels "
                                    "(FM_ENDPOINT_MAX_JSON_DEPTH); send a flatter document")
    return value


class ApiHandler(tornado.web.RequestHandler):
    """JSON in, JSON out; every error a JSON object with an 'error' key."""

    needs_token = True
    during_hand_over = False  # answered while the history is handed over (only the release)

    def initialize(self, api: "Endpoint") -> None:
        self.api = api
        self.counted = False

    def prepare(self) -> None:
        admit(self.api, type(self), self.request.headers.get("Content-Length"),
              len(self.request.body or b""), self.request.headers.get("Authorization", ""))
        self.counted = True

    def on_finish(self) -> None:
        if self.counted:
            self.counted = False
            self.api.leave()

    def json_body(self) -> Any:
        return parse_json(self.api, self.request.body)

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.reason if isinstance(exc, tornado.web.HTTPError) and exc.reason else self._reason
        if status_code == 503:  # the hand-over (cli/handover.py): a sender retries
            self.set_header("Retry-After", str(RETRY_AFTER_S))
        elif status_code >= 500:
            message = "internal error; the kernel log has details"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "status": status_code}))

    def log_exception(self, typ, value, tb) -> None:  # 4xx are the client's business
        if not isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)


class LeanHandler(ApiHandler):
    """A route whose work is ``answer``, so that plain requests to it are
    served by the lean path (lean.py) without a RequestHandler, and the rest
    through tornado by ``serve`` (a subclass's ``get``/``post`` call it),
    with the same answers."""

    watch: Watch | None = None

    @classmethod
    async def answer(cls, api: "Endpoint", args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        """(status, JSON payload, or None for no body); or raises HTTPError."""
        raise NotImplementedError

    async def serve(self, *args: str) -> None:
        self.watch = watch = Watch()
        status, payload = await self.answer(self.api, args, self.request.body or b"", watch)
        if watch.gone:
            return
        if payload is None:
            self.set_status(status)
            self.finish()
        else:
            self.send_json(payload, status)

    def on_connection_close(self) -> None:
        if self.watch is not None:
            self.watch.close()


class SqlHandler(ApiHandler):
    """POST /sql on the endpoint's own bounded pool of SQL workers, so slow
    queries never hold up callbacks and signals (they use the loop's default
    executor); cancelled when the client goes away, capped in rows."""

    cancel: querying.Cancel | None = None

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise tornado.web.HTTPError(400, reason='expected {"query": "SELECT ...", "params": [...]}')
        params = body.get("params") or []
        if not isinstance(params, list):
            raise tornado.web.HTTPError(400, reason="params must be a list")
        if not self.api.sql_slots.acquire(blocking=False):
            raise tornado.web.HTTPError(429, reason=f"{SQL_QUEUE} queries are already running or "
                                        "waiting; retry when one has answered")
        self.cancel = querying.Cancel()
        try:
            res = await asyncio.get_running_loop().run_in_executor(
                self.api.sql_pool, lambda: querying.run(
                    self.api.store(), body["query"], params, self.api.frames,
                    limit_rows=querying.max_rows(), cancel=self.cancel))
        except FlowmetalError as exc:
            raise tornado.web.HTTPError(400, reason=str(exc)) from None
        except KeyboardInterrupt:
            raise tornado.web.HTTPError(400, reason="query interrupted") from None
        finally:
            self.api.sql_slots.release()
        out: dict[str, Any] = {"columns": res.columns, "rows": [list(r) for r in res.rows]}
        if res.truncated:
            out.update(truncated=True, note=querying.truncated_note(res))
        self.send_json(out)

    def on_connection_close(self) -> None:
        if self.cancel is not None:
            self.cancel.cancel_soon("the client closed the connection")


class OpenApiHandler(ApiHandler):
    """GET /openapi.json, without a token: it describes the routes, not the history (openapi.py)."""

    needs_token = False

    def get(self) -> None:
        from .openapi import document

        self.send_json(document(self.api.url))


# Served by every endpoint, beside the routes its starter names.
BUILTIN_ROUTES: tuple[tuple[str, type], ...] = (
    (r"/sql", SqlHandler),
    (r"/openapi.json", OpenApiHandler),
)


class NotFound(ApiHandler):
    needs_token = False

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason=f"no route {self.request.method} {self.request.path}")


class Endpoint:
    """The HTTP API of one kernel on one history."""

    def __init__(self, history: Path, store: Callable[[], Any], kernel_id: str,
                 frames: querying.FrameResolver | None = None, host: str | None = None,
                 max_body: int = MAX_BODY, routes: Sequence[tuple[str, type]] = (),
                 port: int | None = None, limits: Limits | None = None, role: str = "kernel",
                 token: str | None = None):
        """``routes`` are the (pattern, handler) pairs served beside ``/sql``
        and ``/openapi.json``:
        whoever starts the endpoint names them (the runtime passes the flows'),
        so nothing is served because some module happened to be imported.
        ``port``: the one to serve on if free (else any, and ``fallback`` says so).
        ``limits``: connection cap, timeouts, JSON depth (default: from the environment).
        ``role``: "kernel" or "worker" (`fm worker`, whose history a kernel may ask for:
        cli/handover.py), written to the endpoint file. ``token``: the one to keep
        (the previous holder's, on a hand-over, so senders' requests go on working),
        else a new random one."""
        self.history = history
        self.store = store
        self.kernel_id = kernel_id
        self.frames = frames
        self.host = check_host(host or os.environ.get("FM_ENDPOINT_HOST", "127.0.0.1"),
                               os.environ.get("FM_ENDPOINT_ALLOW_REMOTE") == "1")
        self.max_body = max_body
        self.limits = limits or Limits.from_env()
        self.server: GuardedServer | None = None
        self.token = token or secrets.token_urlsafe(32)
        self.routes: list[tuple[str, type[ApiHandler]]] = [*BUILTIN_ROUTES, *routes]
        self.wanted_port = port
        self.port: int | None = None
        self.fallback: str | None = None  # why the wanted port was not had
        self.sql_pool = ThreadPoolExecutor(SQL_WORKERS, thread_name_prefix="fm-sql")
        self.sql_slots = threading.BoundedSemaphore(SQL_QUEUE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._closed = threading.Event()
        self.role = role
        # A hand-over: every request but the release is answered 503 (prepare);
        # the requests let in before it are counted until they have answered.
        self.draining = False
        self.on_release: Callable[[Any], None] | None = None  # set by a worker
        self._busy = threading.Condition()
        self._inflight = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def public_url(self) -> str:
        """The base of URLs handed to other systems (callbacks): ``FM_PUBLIC_URL``
        if set, else ``url``."""
        public = os.environ.get("FM_PUBLIC_URL", "").strip().rstrip("/")
        return public or self.url

    def start(self) -> None:
        threading.Thread(target=self._serve, name="fm-endpoint", daemon=True).start()
        self._started.wait(10)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = tornado.web.Application(
            [(pattern, handler, {"api": self}) for pattern, handler in self.routes],
            default_handler_class=NotFound, default_handler_args={"api": self},
            log_function=_log_request,
        )
        # Up to read_cap a body is read and answered 413 by prepare(); a
        # declared length past it gets its 413 from the headers alone.
        self.server = GuardedServer(app, max_body_size=read_cap(self.max_body),
                                    limits=self.limits, max_body=self.max_body,
                                    lean=Routes(self, self.routes))
        sockets = self._bind()
        self.server.listen_on(sockets)
        self.port = sockets[0].getsockname()[1]
        self._write_file()
        self._started.set()
        loop.run_forever()

    def _bind(self) -> list:
        if self.wanted_port:
            try:
                return tornado.netutil.bind_sockets(self.wanted_port, self.host)
            except OSError as exc:  # someone else has it: serve anyway, and say so
                self.fallback = f"{exc.strerror or exc}"
        return tornado.netutil.bind_sockets(0, self.host)

    def _write_file(self) -> None:
        # The token goes to a file made new under a name nobody can guess in
        # advance (O_EXCL|O_NOFOLLOW: a link planted there is never followed),
        # then renamed over the final name, which replaces a link, not its target.
        path = endpoint_file(self.history)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"url": self.url, "port": self.port, "token": self.token,
                           "pid": os.getpid(), "kernel_id": self.kernel_id, "role": self.role}, f)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def enter(self) -> None:
        with self._busy:
            self._inflight += 1

    def leave(self) -> None:
        with self._busy:
            self._inflight -= 1
            self._busy.notify_all()

    def drain(self, wait: float) -> bool:
        """Answer every new request 503 from now on, and wait up to ``wait``
        seconds for those already let in to answer. True if they all did."""
        self.draining = True
        with self._busy:
            return self._busy.wait_for(lambda: self._inflight <= 0, wait)

    def stop(self) -> None:
        """Close the socket (waiting, briefly, until it is closed: the next
        holder of the history binds this port) and remove the endpoint file."""
        try:
            endpoint_file(self.history).unlink()
        except OSError:
            pass
        if self._loop is not None and not self._closed.is_set():
            self._loop.call_soon_threadsafe(self._close)
            self._closed.wait(5)
        self.sql_pool.shutdown(wait=False, cancel_futures=True)

    def _close(self) -> None:
        if self.server is not None:
            self.server.stop_listening()
        self._closed.set()
        assert self._loop is not None
        self._loop.stop()
