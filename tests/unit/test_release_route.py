"""The endpoint's side of a hand-over, in process: POST /worker/release needs
the token and is served only where a worker set on_release; once released,
every other request is 503 with Retry-After; stop() returns with the socket
closed, so the next holder can bind the kept port at once."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fm_kernel.endpoint import Endpoint
from fm_kernel.endpoint.release import ROUTES

pytestmark = pytest.mark.unit


def _call(url: str, method: str = "POST", token: str | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture
def endpoint(tmp_path: Path):
    ep = Endpoint(tmp_path / "h.duckdb", lambda: None, "k", routes=ROUTES, role="worker")
    ep.start()
    yield ep
    ep.stop()


def test_release_needs_the_token_then_every_other_request_is_503(endpoint: Endpoint) -> None:
    asked: list[dict] = []
    endpoint.on_release = asked.append
    assert json.loads(Path(str(endpoint.history) + ".endpoint.json").read_text())["role"] == "worker"
    status, _, _ = _call(endpoint.url + "/worker/release")
    assert status == 401 and not asked and not endpoint.draining
    status, _, body = _call(endpoint.url + "/worker/release", token=endpoint.token)
    assert status == 202 and body["releasing"] and body["port"] == endpoint.port
    assert asked == [{}] and endpoint.draining
    status, headers, body = _call(endpoint.url + "/sql", token=endpoint.token)
    assert status == 503 and headers["Retry-After"] == "1" and "handed over" in body["error"]
    assert _call(endpoint.url + "/worker/release", token=endpoint.token)[0] == 202  # asked again


def test_a_worker_still_starting_says_ask_again_and_a_kernel_says_no(tmp_path: Path,
                                                                     endpoint: Endpoint) -> None:
    status, headers, body = _call(endpoint.url + "/worker/release", token=endpoint.token)
    assert status == 503 and headers["Retry-After"] == "1" and "starting" in body["error"]
    kernel = Endpoint(tmp_path / "k.duckdb", lambda: None, "k", routes=ROUTES)
    kernel.start()
    try:
        status, _, body = _call(kernel.url + "/worker/release", token=kernel.token)
        assert status == 404 and "fm worker" in body["error"] and not kernel.draining
    finally:
        kernel.stop()


def test_stop_returns_with_the_port_free(tmp_path: Path) -> None:
    ep = Endpoint(tmp_path / "h.duckdb", lambda: None, "k")
    ep.start()
    port = ep.port
    assert ep._loop is not None
    ep._loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop busy with a request meanwhile
    ep.stop()
    with socket.socket() as s:  # as tornado binds: SO_REUSEADDR, so TIME_WAIT is no obstacle
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
