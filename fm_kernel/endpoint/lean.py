"""The lean path: plain requests to a few hot routes answered straight from
the socket, without tornado's per-request machinery.

Why: an ``fm.task`` round trip is two requests (a claim, a completion), and
through tornado each cost ~0.25 ms of the kernel's CPU (IOStream futures,
header objects, a RequestHandler with its headers, routing, flush): with
eight workers at once on one GIL that was most of the 8.6 ms round trip
(docs/benchmarks.md). Here one such request costs a few dozen microseconds.

Every connection starts here. A request is served here only when it is
plain: HTTP/1.1, a path of printable ASCII without ``%`` or a query,
``Content-Length`` (or no body) within the limit, no ``Transfer-Encoding``
or ``Expect``, each header once, and its path's first matching route a
LeanHandler with that method. Anything else hands the connection, with the
bytes read so far, to tornado, which serves it from then on as it serves
every other connection; so every odd case gets tornado's answer, and the
answers here are those of the same handlers' ``answer`` (admission: token,
hand-over, size, in ``admit``; errors the same JSON bodies and codes).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import socket
import time
from http.client import responses
from typing import Any, Callable

import tornado.httputil
import tornado.iostream
import tornado.web

log = logging.getLogger("fm_kernel.endpoint")

_PLAIN_PATH = re.compile(r"/[!-~]*\Z")  # printable ASCII, no space
_ODD = re.compile(r"[%?#]")  # escapes, a query: tornado's
_MAX_HEAD = 16 * 1024  # a head longer than this goes to tornado (which has its own limit)
_METHODS = ("get", "post", "put", "patch", "delete")


class Watch:
    """What a long answer watches: ``gone`` once the client closed the
    connection; ``woken`` (an answer's future) is resolved then."""

    gone = False
    woken: asyncio.Future | None = None

    def close(self) -> None:
        self.gone = True
        if self.woken is not None and not self.woken.done():
            self.woken.set_result(None)


class Routes:
    """Which routes the lean path serves: a path's first matching route (in
    the endpoint's order, as tornado picks), when its handler has an
    ``answer`` and serves the method."""

    def __init__(self, api: Any, routes: list[tuple[str, type]]):
        self.api = api
        self.table = []
        for pattern, handler in routes:
            methods = {m.upper() for m in _METHODS if getattr(handler, m)
                       is not getattr(tornado.web.RequestHandler, m)}
            lean = getattr(handler, "answer", None) is not None
            self.table.append((re.compile(pattern if pattern.endswith("$") else pattern + "$"),
                               handler if lean else None, methods))

    def find(self, method: str, path: str) -> tuple[type, tuple[str, ...]] | None:
        for regex, handler, methods in self.table:
            m = regex.match(path)
            if m is not None:
                return (handler, m.groups()) if handler is not None and method in methods else None
        return None


class _Date:
    """The Date header, formatted once a second."""

    second, text = 0, ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.text = now, email.utils.formatdate(now, usegmt=True)
        return self.text


_date = _Date()


def response(status: int, payload: Any, close: bool, extra: str = "") -> bytes:
    """The bytes of an answer: JSON ``payload`` (None: no body, as a 204)."""
    head = f"HTTP/1.1 {status} {responses.get(status, 'Unknown')}\r\nDate: {_date()}\r\n{extra}"
    if close:
        head += "Connection: close\r\n"
    if payload is None:
        return (head + "\r\n").encode("latin-1")
    body = json.dumps(payload, default=str).encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("latin-1") + body


def error_answer(exc: BaseException) -> tuple[int, Any, str]:
    """(status, body, extra headers) for an exception, as ApiHandler.write_error answers it."""
    if isinstance(exc, tornado.web.HTTPError):
        code = exc.status_code
        message = exc.reason or responses.get(code, "Unknown")
    else:
        code, message = 500, ""
    if code == 503:
        from . import RETRY_AFTER_S

        return code, {"error": message, "status": code}, f"Retry-After: {RETRY_AFTER_S}\r\n"
    if code >= 500:
        message = "internal error; the kernel log has details"
    return code, {"error": message, "status": code}, ""


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, path, headers by lower-case name) of a plain request head, else None."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or not _PLAIN_PATH.match(parts[1]) \
            or _ODD.search(parts[1]):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip() or name in headers:
            return None
        headers[name] = value.strip()
    if "transfer-encoding" in headers or "expect" in headers:
        return None
    return parts[0], parts[1], headers


class LeanConnection:
    """One client connection, served here until a request is not plain (see
    the module doc), then handed to tornado with what was read of it."""

    def __init__(self, server: Any, sock: socket.socket, address: Any, routes: Routes):
        self.server, self.sock, self.address, self.routes = server, sock, address, routes
        self.api = routes.api
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.buf = bytearray()  # read, not yet answered
        self.out = bytearray()  # answered, not yet sent
        self.busy = False  # an answer is being made
        self.closing = False  # close once ``out`` is sent
        self.closed = False
        self.paused = False  # not reading: too much sent ahead
        self.in_body = False  # the next request's headers are read, its body is not
        self.watch: Watch | None = None
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(self.fd, self._readable)
        self._arm(server.limits.header_timeout)

    # -- timeouts: one timer, moved by setting ``deadline`` --

    def _arm(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else self.loop.time() + seconds
        if self.deadline is None:
            return
        if self.timer is not None and self.timer.when() > self.deadline:
            self.timer.cancel()  # set for a later deadline (a body's): too late for this one
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.closed or self.deadline is None:
            return
        if self.loop.time() >= self.deadline:  # headers or body too slow: as tornado, close
            self._close()
        else:
            self.timer = self.loop.call_at(self.deadline, self._check)

    # -- reading --

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away (a waiting claim takes no task then)
            if self.watch is not None:
                self.watch.close()
            self._close()
            return
        self.buf += data
        if not self.busy:
            self._next()
        elif len(self.buf) > _MAX_HEAD + self.api.max_body:
            # a client sending on while its answer is made: read no more
            # until it is answered (a close goes unseen till then)
            self.loop.remove_reader(self.fd)
            self.paused = True

    def _next(self) -> None:
        """Answer the next whole request in ``buf``, or hand the connection over."""
        if self.busy or self.out or self.closed:
            return  # (called again when the answer or the sending is done)
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self._hand_over()
            return
        parsed = _parse_head(bytes(self.buf[:end]))
        found = parsed and self.routes.find(parsed[0], parsed[1])
        length = parsed[2].get("content-length", "0") if parsed else ""
        if not found or not length.isdigit() or int(length) > self.api.max_body:
            self._hand_over()
            return
        total = end + 4 + int(length)
        if len(self.buf) < total:
            if not self.in_body:  # the headers are whole: the body has its own time from now
                self.in_body = True
                self._arm(self.server.limits.body_timeout)
            return
        self.in_body = False
        body = bytes(self.buf[end + 4:total])
        del self.buf[:total]
        self.busy = True
        self._arm(None)
        assert parsed is not None and found
        close = parsed[2].get("connection", "").lower() == "close"
        self.loop.create_task(self._serve(found[0], found[1], parsed, body, close))

    async def _serve(self, handler: Any, args: tuple[str, ...], parsed: tuple[str, str, dict],
                     body: bytes, close: bool) -> None:
        from . import admit

        method, path, headers = parsed
        api, t0, extra = self.api, time.perf_counter(), ""
        admitted = False
        self.watch = watch = Watch()
        try:
            admit(api, handler, headers.get("content-length"), len(body),
                  headers.get("authorization", ""))
            admitted = True
            status, payload = await handler.answer(api, args, body, watch)
        except Exception as exc:
            if not isinstance(exc, tornado.web.HTTPError):
                log.error("endpoint: %s %s failed", method, path, exc_info=True)
            status, payload, extra = error_answer(exc)
        self.watch = None
        if not watch.gone and not self.closed:
            self._send(response(status, payload, close, extra))
        if admitted:
            api.leave()
        level = logging.WARNING if status >= 500 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%d %s %s (%s) %.1f ms", status, method, path, self.address,
                    1000 * (time.perf_counter() - t0))
        self.busy = False
        if close:
            self.closing = True
            if not self.out:
                self._close()
        elif not self.closed:
            if self.paused:
                self.paused = False
                self.loop.add_reader(self.fd, self._readable)
            self._arm(self.server.limits.header_timeout)
            self._next()

    # -- writing --

    def _send(self, data: bytes) -> None:
        if not self.out:
            try:
                data = data[self.sock.send(data):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close()
                return
            if not data:
                return
            self.loop.add_writer(self.fd, self._writable)
        self.out += data

    def _writable(self) -> None:
        try:
            del self.out[:self.sock.send(self.out)]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close()
            return
        if not self.out:
            self.loop.remove_writer(self.fd)
            if self.closing:
                self._close()
            else:
                self._next()

    # -- the end, or tornado --

    def _hand_over(self) -> None:
        """tornado serves this connection from now on, starting with the bytes in ``buf``."""
        if not self.paused:
            self.loop.remove_reader(self.fd)
        self.closed = True  # for this object; the server counts the connection until tornado closes it
        stream = tornado.iostream.IOStream(self.sock, max_buffer_size=self.server.max_buffer_size,
                                           read_chunk_size=self.server.read_chunk_size)
        if self.buf:
            stream._read_buffer += self.buf
            stream._read_buffer_size += len(self.buf)
        self.server.handle_stream(stream, self.address)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.paused:
            self.loop.remove_reader(self.fd)
        if self.out:
            self.loop.remove_writer(self.fd)
        if self.timer is not None:
            self.timer.cancel()
        self.sock.close()
        self.server.open_connections -= 1
