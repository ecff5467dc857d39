"""fm_kernel/http_client.py against a real HTTP server on loopback that
answers from a script: what is retried (503 after its capped Retry-After,
refused connections when the caller allows it, a 401 when the caller can
read a new token), what never is (any other 4xx), when it gives up, and the
one log line per retry."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from fm_kernel.http_client import RENEWS, Patience, send

pytestmark = pytest.mark.unit

log = logging.getLogger("fm_kernel.test_http_client")


class Script:
    """What the server answers, in order (the last answer repeats; status 0:
    close the connection without one), and the tokens the requests came with."""

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.tokens: list[str] = []
        self.token: str | None = None  # when set, any other token is answered 401

    def next(self, token: str) -> tuple[int, dict[str, str]]:
        self.tokens.append(token)
        if self.token is not None and token != f"token {self.token}":
            return 401, {}
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def answered(self) -> None:
        """Called after each answer is sent (a hook for the hand-over test)."""


def serve(script: Script, port: int = 0) -> ThreadingHTTPServer:
    """A server on loopback (``port``: 0 for any) answering from ``script``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers = script.next(self.headers.get("Authorization", ""))
            if status == 0:
                self.close_connection = True
                return
            body = json.dumps({"status": status} if status < 400 else {"error": f"no ({status})"})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            script.answered()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script((200, {}))
    httpd = serve(script)
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_503_is_retried_after_its_retry_after_capped(server, caplog) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    url, script = server
    script.answers = [(503, {"Retry-After": "3600"}), (503, {}), (200, {})]
    answer = send((url, "t"), "POST", "/x", {"a": 1}, patience=Patience(for_s=5, most_s=0.04, log=log))
    assert answer.status == 200 and answer.body == {"status": 200}, answer
    said = lines(caplog)
    assert len(said) == 2 and all("POST /x answered 503 (no (503))" in s for s in said), said
    assert all(s.endswith("again in 0.0 s") for s in said), said  # an hour asked, 0.04 s waited


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500])
def test_other_answers_are_the_caller_s_at_once(server, caplog, status: int) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    url, script = server
    script.answers = [(status, {"Retry-After": "0"})]
    answer = send((url, "t"), "POST", "/x", patience=Patience(refused=True, unanswered=True, log=log))
    assert answer.status == status and answer.error() == f"no ({status})", answer
    assert len(script.tokens) == 1 and lines(caplog) == []


def test_a_refused_connection_is_retried_only_when_the_caller_allows_it(server, caplog) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    url, _ = server
    gone = closed_port()
    asked: list[int] = []

    def where() -> tuple[str, str]:  # the kept port comes back on the third try
        asked.append(1)
        return (gone if len(asked) < 3 else url), "t"

    with pytest.raises(OSError):
        send(where, "POST", "/x", patience=Patience(log=log))
    assert len(asked) == 1 and lines(caplog) == []
    asked.clear()
    answer = send(where, "POST", "/x", patience=Patience(refused=True, first_s=0.01, log=log))
    assert answer.status == 200 and len(asked) == 3, (answer, asked)
    said = lines(caplog)
    assert len(said) == 2 and all("POST /x did not answer (" in s for s in said), said


def test_a_cut_connection_is_retried_only_by_a_caller_whose_requests_may_repeat(server) -> None:
    url, script = server
    script.answers = [(0, {}), (200, {})]  # 0: the connection closed with no answer
    with pytest.raises(OSError):
        send((url, "t"), "POST", "/x", patience=Patience(refused=True))
    assert len(script.tokens) == 1  # it may have been applied: not sent again
    script.answers = [(0, {}), (200, {})]
    answer = send((url, "t"), "POST", "/x", patience=Patience(unanswered=True, first_s=0.01))
    assert answer.status == 200 and len(script.tokens) == 3, script.tokens


def test_it_gives_up_when_its_patience_runs_out(server) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "0.01"})]
    assert send((url, "t"), "POST", "/x", patience=Patience(for_s=0.2)).status == 503
    assert len(script.tokens) > 1
    with pytest.raises(OSError):
        send((closed_port(), "t"), "POST", "/x", patience=Patience(for_s=0.2, refused=True,
                                                                    first_s=0.01))


def test_a_replaced_token_is_read_again_a_few_times_at_most(server) -> None:
    url, script = server
    script.token = "new"
    known = ["old"]

    def where() -> tuple[str, str]:
        return url, known[0]

    assert send(where, "POST", "/x").status == 401  # no way to read a new one: the caller's
    script.tokens.clear()
    answer = send(where, "POST", "/x", renew=lambda: known.__setitem__(0, "new"),
                  patience=Patience(first_s=0.01))
    assert answer.status == 200 and script.tokens == ["token old", "token new"], script.tokens
    script.tokens.clear()
    script.token = "newer"  # a file that never has the right one: 401 in the end
    answer = send(where, "POST", "/x", renew=lambda: None, patience=Patience(first_s=0.001))
    assert answer.status == 401 and len(script.tokens) == RENEWS + 1, script.tokens


def test_fm_commands_wait_out_a_hand_over_s_503s_and_the_refused_gap_after() -> None:
    """What `fm signal` meets while `fm worker` hands its history to a kernel:
    503s from the worker, then nothing listening on the kept port, then the
    kernel on that port."""
    from fm_kernel.cli import remote

    worker = Script((503, {"Retry-After": "0.2"}))
    old = serve(worker)
    port = old.server_address[1]
    kernel: list[ThreadingHTTPServer] = []

    def let_go() -> None:  # after its second 503 the worker closes; the kernel binds 0.5 s later
        if len(worker.tokens) == 2:
            threading.Thread(target=lambda: (old.shutdown(), old.server_close(), time.sleep(0.5),
                                             kernel.append(serve(Script((200, {})), port)))).start()

    worker.answered = let_go  # type: ignore[method-assign]
    try:
        said = remote.call({"url": f"http://127.0.0.1:{port}", "token": "t"}, "POST", "/x", {})
    finally:
        for httpd in kernel or [old]:
            httpd.shutdown()
            httpd.server_close()
    assert said == {"status": 200} and len(worker.tokens) >= 2, (said, worker.tokens)
