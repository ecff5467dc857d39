"""The endpoint's limits on what clients may hold: a connection cap, a
reserve of file descriptors the endpoint never takes, header and body
timeouts, early 413s and JSON depth. One slow or hostile client, or a
thousand, can occupy at most this much of the kernel, never its channels."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.iostream

from ..errors import FlowmetalError
from .lean import LeanConnection

log = logging.getLogger("fm_kernel.endpoint")


@dataclass(frozen=True)
class Limits:
    """What the endpoint lets clients hold, from ``FM_ENDPOINT_*`` (docs/security.md).

    A connection past ``max_connections``, or one that would leave fewer than
    ``fd_reserve`` free file descriptors, is closed as soon as it is accepted,
    before anything is read: the kernel's own channels and files come first."""

    max_connections: int = 256
    header_timeout: float = 10.0  # s from opening or the last response to a request's full headers
    body_timeout: float = 30.0    # s from the headers to the end of the body
    max_json_depth: int = 64
    fd_reserve: int = 64          # descriptors the endpoint never takes

    @classmethod
    def from_env(cls) -> "Limits":
        d = cls()
        return cls(max_connections=_env_number("FM_ENDPOINT_MAX_CONNECTIONS", d.max_connections, int),
                   header_timeout=_env_number("FM_ENDPOINT_HEADER_TIMEOUT", d.header_timeout, float),
                   body_timeout=_env_number("FM_ENDPOINT_BODY_TIMEOUT", d.body_timeout, float),
                   max_json_depth=_env_number("FM_ENDPOINT_MAX_JSON_DEPTH", d.max_json_depth, int),
                   fd_reserve=_env_number("FM_ENDPOINT_FD_RESERVE", d.fd_reserve, int))


def _env_number(name: str, default: Any, kind: type) -> Any:
    given = os.environ.get(name, "").strip()
    if not given:
        return default
    try:
        value = kind(given)
    except ValueError:
        value = None
    if value is None or not value > 0 or value != value:
        raise FlowmetalError(f"{name}={given!r} is not a positive number; unset it or give one "
                             f"(default {default})")
    return value


def fd_headroom() -> int:
    """File descriptors this process may still open (RLIMIT_NOFILE read each
    time: a limit lowered while the kernel runs counts at once)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir held
    except OSError:  # no /proc: count by probing is too slow; assume the worst seen
        return soft
    return soft - used


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative:
    the check itself must not recurse)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


class _Watched(tornado.httputil.HTTPMessageDelegate):
    """Answers 413 from the headers alone when Content-Length is past what is
    worth reading (4x the limit), so such a body is never read; a body
    nearer the limit is read and answered 413 by the handler, since a client
    that is still sending would only see the connection reset."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate,
                 conn: tornado.httputil.HTTPConnection, max_body: int):
        self.inner, self.conn, self.max_body, self.refused = inner, conn, max_body, False

    def headers_received(self, start_line: Any, headers: Any) -> Any:
        length = headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > read_cap(self.max_body):
            self.refused = True
            body = json.dumps({"error": f"body of {int(length)} bytes is over the "
                               f"{self.max_body}-byte limit", "status": 413}).encode()
            self.conn.write_headers(
                tornado.httputil.ResponseStartLine("HTTP/1.1", 413, "Payload Too Large"),
                tornado.httputil.HTTPHeaders({"Content-Type": "application/json",
                                              "Content-Length": str(len(body)),
                                              "Connection": "close"}), body)
            self.conn.finish()  # tornado closes the connection: the body is never read
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return None if self.refused else self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()


def read_cap(max_body: int) -> int:
    """The most body bytes read before answering 413 (tornado's own cap)."""
    return max_body * 4 + 4096


class GuardedServer(tornado.httpserver.HTTPServer):
    """An HTTPServer that accepts its own connections: a cap, a reserve of
    file descriptors, and no spinning when the table is full.

    Tornado's accept loop raises on EMFILE and is called again at once while
    the backlog is non-empty: one thread spinning on the GIL, connections
    never drained. Here a spare descriptor is kept open; on EMFILE it is
    closed, one connection accepted and dropped, and the spare taken back, so
    the backlog drains; if even that fails, accepting pauses for a moment."""

    def initialize(self, *args: Any, limits: Limits, max_body: int, lean: Any = None,
                   **kwargs: Any) -> None:
        super().initialize(*args, idle_connection_timeout=limits.header_timeout,
                           body_timeout=limits.body_timeout, **kwargs)
        self.limits, self.max_body = limits, max_body
        self.lean = lean  # lean.Routes: connections start on the lean path (lean.py)
        self.open_connections = 0
        self.refused = 0
        self._spare: int | None = None
        self._listeners: dict[int, socket.socket] = {}
        self._last_warning = 0.0

    def listen_on(self, sockets: list[socket.socket]) -> None:
        self._spare = self._take_spare()
        loop = asyncio.get_event_loop()  # the endpoint thread's, not yet running
        for sock in sockets:
            sock.setblocking(False)
            self._listeners[sock.fileno()] = sock
            loop.add_reader(sock.fileno(), self._accept, sock)

    @staticmethod
    def _take_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(128):  # then let the loop serve the others
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._drop_one(sock)
                else:
                    log.warning("endpoint: accept failed: %s", exc)
                return
            why = self._refusal(conn)
            if why:
                conn.close()
                self._refused(why)
                continue
            self.open_connections += 1
            if self.lean is not None:
                LeanConnection(self, conn, address, self.lean)
                continue
            stream = tornado.iostream.IOStream(conn, max_buffer_size=self.max_buffer_size,
                                               read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)

    def _refusal(self, conn: socket.socket) -> str | None:
        if self.open_connections >= self.limits.max_connections:
            return f"{self.open_connections} connections open (FM_ENDPOINT_MAX_CONNECTIONS)"
        if fd_headroom() < self.limits.fd_reserve:
            return ("fewer than FM_ENDPOINT_FD_RESERVE="
                    f"{self.limits.fd_reserve} file descriptors free")
        return None

    def _drop_one(self, sock: socket.socket) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                sock.accept()[0].close()
            except OSError:
                pass
            self._spare = self._take_spare()
            self._refused("the file-descriptor table is full")
            return
        # No spare to give back: stop reading the listener for a moment
        # rather than being woken for it again and again.
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(0.5, self._resume, sock)
        self._refused("the file-descriptor table is full (no spare descriptor)")

    def _resume(self, sock: socket.socket) -> None:
        if self._spare is None:
            self._spare = self._take_spare()
        if sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def _refused(self, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s, not one per connection
            self._last_warning = now
            log.warning("endpoint: refusing new connections: %s (%d refused so far)",
                        why, self.refused)

    def start_request(self, server_conn: object,
                      request_conn: tornado.httputil.HTTPConnection) -> Any:
        return _Watched(super().start_request(server_conn, request_conn), request_conn,
                        self.max_body)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)

    def stop_listening(self) -> None:
        loop = asyncio.get_running_loop()
        for fd, sock in list(self._listeners.items()):
            loop.remove_reader(fd)
            sock.close()
        self._listeners.clear()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
