"""The endpoint's lean path (fm_kernel/endpoint/lean.py), in process over
real sockets: a plain request to a LeanHandler route gets the same status
and body as the same request served by tornado (a query string sends it
there), for every refusal too (401, 400, 413, 503, 500); a connection whose
next request is not plain goes on through tornado with the bytes already
read; requests cut into single bytes or sent together are each answered
once; a client that leaves while it waits is seen; an idle connection is
closed after the header timeout. Which path answered shows in tornado's
``Server`` header."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from fm_kernel.endpoint import ApiHandler, Endpoint, LeanHandler, Watch, parse_json
from fm_kernel.endpoint.limits import Limits

pytestmark = pytest.mark.unit

LEFT: list[str] = []  # what the waiting route saw: "gone" when its client left


class Echo(LeanHandler):
    async def post(self, what: str) -> None:
        await self.serve(what)

    @classmethod
    async def answer(cls, api: Any, args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        if args[0] == "boom":
            raise RuntimeError("a bug")
        if args[0] == "nothing":
            return 204, None
        return 200, {"what": args[0], "body": parse_json(api, body)}


class Wait(LeanHandler):
    async def post(self) -> None:
        await self.serve()

    @classmethod
    async def answer(cls, api: Any, args: tuple[str, ...], body: bytes,
                     watch: Watch) -> tuple[int, Any]:
        watch.woken = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(watch.woken, 10)
        except asyncio.TimeoutError:
            pass
        LEFT.append("gone" if watch.gone else "timed out")
        return 204, None


class Plain(ApiHandler):
    def get(self) -> None:
        self.send_json({"plain": True})


@pytest.fixture
def endpoint(tmp_path: Path):
    ep = Endpoint(tmp_path / "h.duckdb", lambda: None, "k", max_body=1000,
                  routes=((r"/echo/([a-z]+)", Echo), (r"/wait", Wait), (r"/plain", Plain)),
                  limits=Limits(header_timeout=1.0, body_timeout=1.0))
    ep.start()
    yield ep
    ep.stop()


def _request(ep: Endpoint, method: str, path: str, body: bytes = b"", token: bool = True,
             extra: str = "") -> bytes:
    auth = f"Authorization: token {ep.token}\r\n" if token else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _responses(sock: socket.socket, n: int) -> list[tuple[int, dict[str, str], Any]]:
    """Read ``n`` responses (each with Content-Length or none) off ``sock``."""
    data, out = b"", []
    while len(out) < n:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            lines = data[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            size = int(headers.get("content-length", "0"))
            if len(data) >= end + 4 + size:
                body = data[end + 4:end + 4 + size]
                out.append((int(lines[0].split()[1]), headers, json.loads(body) if body else None))
                data = data[end + 4 + size:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} of {n} responses"
        data += chunk
    return out


def _one(ep: Endpoint, raw: bytes) -> tuple[int, dict[str, str], Any]:
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        s.sendall(raw)
        return _responses(s, 1)[0]


@pytest.mark.parametrize("path, body, token, status", [
    ("/echo/abc", b'{"x": 1}', True, 200),
    ("/echo/abc", b'{"x": 1}', False, 401),
    ("/echo/abc", b"{not json", True, 400),
    ("/echo/abc", b"[" * 100 + b"]" * 100, True, 400),
    ("/echo/abc", b"1" * 1001, True, 413),  # past the limit: tornado's, on both
    ("/echo/boom", b"", True, 500),
    ("/echo/nothing", b"", True, 204),
])
def test_the_lean_answer_is_tornados(endpoint: Endpoint, path: str, body: bytes, token: bool,
                                     status: int) -> None:
    lean = _one(endpoint, _request(endpoint, "POST", path, body, token))
    slow = _one(endpoint, _request(endpoint, "POST", path + "?via=tornado", body, token))
    assert ("server" not in lean[1]) == (status != 413) and slow[1]["server"].startswith("Tornado")
    assert lean[0] == slow[0] == status
    assert lean[2] == slow[2]
    if status != 204:
        assert lean[1]["content-type"] == slow[1]["content-type"] == "application/json"


def test_during_a_hand_over_both_paths_answer_503_with_retry_after(endpoint: Endpoint) -> None:
    endpoint.draining = True
    lean = _one(endpoint, _request(endpoint, "POST", "/echo/abc", b"{}"))
    slow = _one(endpoint, _request(endpoint, "POST", "/echo/abc?x", b"{}"))
    assert lean[0] == slow[0] == 503 and lean[2] == slow[2]
    assert lean[1]["retry-after"] == slow[1]["retry-after"] == "1"


def test_one_connection_goes_on_through_tornado_with_what_was_read(endpoint: Endpoint) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
        s.sendall(_request(endpoint, "POST", "/echo/one", b'"a"')
                  + _request(endpoint, "GET", "/plain")  # not lean: tornado's from here
                  + _request(endpoint, "POST", "/echo/two", b'"b"'))
        got = _responses(s, 3)
    assert [(g[0], g[2]) for g in got] == [(200, {"what": "one", "body": "a"}),
                                          (200, {"plain": True}),
                                          (200, {"what": "two", "body": "b"})]
    assert "server" not in got[0][1] and "server" in got[1][1] and "server" in got[2][1]


def test_requests_cut_into_bytes_or_sent_together_are_each_answered_once(endpoint: Endpoint) -> None:
    raw = b"".join(_request(endpoint, "POST", f"/echo/{w}", json.dumps(w).encode())
                   for w in ("a", "bb", "ccc"))
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(raw)):
            s.send(raw[i:i + 1])
        got = _responses(s, 3)
        s.sendall(raw)
        got += _responses(s, 3)
    assert [g[2]["body"] for g in got] == ["a", "bb", "ccc"] * 2
    assert all("server" not in g[1] for g in got)


def test_connection_close_is_honoured(endpoint: Endpoint) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
        s.sendall(_request(endpoint, "POST", "/echo/abc", b"1", extra="Connection: close\r\n"))
        status, headers, _ = _responses(s, 1)[0]
        assert status == 200 and headers["connection"] == "close"
        assert s.recv(10) == b""


def test_a_client_that_leaves_while_it_waits_is_seen(endpoint: Endpoint) -> None:
    LEFT.clear()
    s = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
    s.sendall(_request(endpoint, "POST", "/wait", b"{}"))
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 5
    while not LEFT and time.monotonic() < deadline:
        time.sleep(0.05)
    assert LEFT == ["gone"]


def test_an_idle_connection_is_closed_after_the_header_timeout(endpoint: Endpoint) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
        s.sendall(b"POST /echo/abc HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert time.monotonic() - t0 < 5
    assert endpoint.server is not None
    deadline = time.monotonic() + 5
    while endpoint.server.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert endpoint.server.open_connections == 0


def test_a_route_that_is_not_lean_is_unchanged(endpoint: Endpoint) -> None:
    status, headers, body = _one(endpoint, _request(endpoint, "GET", "/plain"))
    assert status == 200 and body == {"plain": True} and "server" in headers
    status, _, body = _one(endpoint, _request(endpoint, "GET", "/echo/abc"))  # no GET there
    assert status == 405
    assert isinstance(tornado.web.HTTPError(405), Exception)


def test_a_body_has_its_own_time_from_the_end_of_the_headers(tmp_path: Path) -> None:
    ep = Endpoint(tmp_path / "b.duckdb", lambda: None, "k", routes=((r"/echo/([a-z]+)", Echo),),
                  limits=Limits(header_timeout=0.5, body_timeout=3.0))
    ep.start()
    try:
        with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
            raw = _request(ep, "POST", "/echo/abc", b'"slow"')
            s.sendall(raw[:-3])
            time.sleep(1.0)  # past the header timeout, within the body's
            s.sendall(raw[-3:])
            assert _responses(s, 1)[0][2] == {"what": "abc", "body": "slow"}
            t0 = time.monotonic()  # then idle: the header timeout again, not the body's
            assert s.recv(10) == b""
            assert time.monotonic() - t0 < 2.0
        with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
            s.sendall(_request(ep, "POST", "/echo/abc", b'"never"')[:-3])
            t0 = time.monotonic()
            assert s.recv(10) == b""  # cut off after the body timeout
            assert 2.0 < time.monotonic() - t0 < 8
    finally:
        ep.stop()
