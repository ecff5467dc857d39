"""The endpoint cannot be starved: real kernels, real sockets, a real (lowered)
file-descriptor limit. Idle connections past the table, connections past the
cap, headers or a body sent a byte a second, JSON nested 100,000 deep and
bodies far over the limit: the kernel keeps answering its frontend, the
endpoint keeps serving others, and no answer is a 5xx."""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, check  # noqa: E402

CAP = 24


def _info(history: Path) -> dict:
    return json.loads(Path(str(history) + ".endpoint.json").read_text())


def _start(history: Path, env: dict[str, str], nofile: int | None = None) -> Kernel:
    """A kernel whose RLIMIT_NOFILE is ``nofile`` from its first instruction:
    the soft limit is lowered here only while it is launched (it inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    try:
        return Kernel(env={"FM_HISTORY": str(history), **env})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _request(port: int, method: str, path: str, token: str | None, body: bytes | None = None,
             timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"token {token}"} if token else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within`` s;
    anything it sends first (a 408) is read past."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            return False
        except OSError:
            return True
    return False


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in ticks of 1/100 s


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kernel, int, str]]:
    history = tmp_path_factory.mktemp("limits") / "h.duckdb"
    env = {"FM_ENDPOINT_MAX_CONNECTIONS": str(CAP), "FM_ENDPOINT_HEADER_TIMEOUT": "3",
           "FM_ENDPOINT_BODY_TIMEOUT": "3"}
    with _start(history, env) as k:
        check(k, "x = 1")
        info = _info(history)
        yield k, info["port"], info["token"]


@pytest.mark.timeout(240)
def test_a_full_descriptor_table_never_stops_the_kernels_channels(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    # 256, or more if this test process holds that many already (the limit
    # applies to it too while it launches the kernel)
    limit = max(256, len(os.listdir("/proc/self/fd")) + 128)
    # the cap is set out of the way: the descriptor reserve alone must hold
    with _start(history, {"FM_ENDPOINT_MAX_CONNECTIONS": "100000"}, nofile=limit) as k:
        assert check(k, "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
                     ).strip() == str(limit)
        info = _info(history)
        socks = []
        for _ in range(limit + 200):  # more than the whole table; non-blocking, as a flood is
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", info["port"]))
            socks.append(s)
        try:
            time.sleep(2)
            cpu = _cpu_seconds(k.pid)
            t0 = time.monotonic()
            out = check(k, "print(sum(range(10)))", timeout=15)
            assert out.strip() == "45" and time.monotonic() - t0 < 10
            time.sleep(2)  # held, idle: the endpoint must not spin on a full table
            assert _cpu_seconds(k.pid) - cpu < 1.5, "the kernel spins while the table is full"
        finally:
            for s in socks:
                s.close()
        time.sleep(1)
        t0 = time.monotonic()
        assert check(k, "print('after')", timeout=15).strip() == "after"
        assert time.monotonic() - t0 < 10
        status, body = _request(info["port"], "POST", "/sql", info["token"],
                                json.dumps({"query": "SELECT count(*) FROM steps"}).encode())
        assert status == 200, body  # the endpoint serves again once they are gone


@pytest.mark.timeout(120)
def test_connections_past_the_cap_are_closed_before_anything_is_read(
        kernel: tuple[Kernel, int, str]) -> None:
    k, port, token = kernel
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(CAP)]
    try:
        time.sleep(0.5)
        extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(CAP)]
        closed = sum(_closed_by_server(s, 2) for s in extra)
        for s in extra:
            s.close()
        assert closed == CAP, f"{closed} of {CAP} connections past the cap were closed"
        assert all(not _closed_by_server(s, 0.05) for s in held)  # the first CAP are kept
        assert check(k, "print('cells run')").strip() == "cells run"
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    status, _ = _request(port, "POST", "/sql", token, b'{"query": "SELECT 1"}')
    assert status == 200


@pytest.mark.timeout(120)
def test_slowloris_headers_are_cut_off_while_others_are_served(
        kernel: tuple[Kernel, int, str]) -> None:
    _, port, token = kernel
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    slow = socket.create_connection(("127.0.0.1", port), timeout=5)
    slow.sendall(b"POST /sql HTTP/1.1\r\nHost: x\r\n")
    cut = threading.Event()

    def drip() -> None:  # one byte a second, never the blank line that ends the headers
        for _ in range(15):
            try:
                slow.send(b"X")
            except OSError:
                cut.set()
                return
            time.sleep(1)

    started = time.monotonic()
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    t0 = time.monotonic()
    status, _ = _request(port, "POST", "/sql", token, b'{"query": "SELECT 1"}')
    assert status == 200 and time.monotonic() - t0 < 2  # served meanwhile
    assert _closed_by_server(slow, 8) or cut.is_set(), "slowloris not cut off"
    assert time.monotonic() - started < 8
    assert _closed_by_server(idle, 2)  # an idle connection too, by the same deadline
    slow.close()
    idle.close()


@pytest.mark.timeout(120)
def test_a_slow_body_is_cut_off(kernel: tuple[Kernel, int, str]) -> None:
    _, port, token = kernel
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"POST /sql HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
              "Content-Length: 100\r\n\r\n".encode())
    started = time.monotonic()
    reply = b""
    while time.monotonic() - started < 10:
        try:
            s.send(b" ")
        except OSError:
            break
        s.settimeout(1)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if chunk == b"":
            break
        reply += chunk
    assert time.monotonic() - started < 8, "a body sent a byte a second was never cut off"
    assert not reply.startswith(b"HTTP/1.1 5"), reply
    s.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["/sql", "/runs/abc/signals/go", "/callbacks/" + "0" * 32])
def test_deeply_nested_json_is_400(kernel: tuple[Kernel, int, str], path: str) -> None:
    _, port, token = kernel
    for depth in (100_000, 65):
        body = b"[" * depth + b"]" * depth
        status, payload = _request(port, "POST", path, token, body)
        assert status == 400, (depth, status, payload[:200])
        error = json.loads(payload)["error"]
        assert "deeper than 64" in error and "\n" not in error, error
    status, _ = _request(port, "POST", "/sql", token,
                         json.dumps({"query": "SELECT 1", "params": [[[1]]]}).encode())
    assert status < 500


@pytest.mark.timeout(120)
def test_a_huge_body_is_answered_413_without_being_read(kernel: tuple[Kernel, int, str]) -> None:
    k, port, token = kernel
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /sql HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
              f"Content-Length: {50 << 20}\r\n\r\n".encode())  # 50 MiB declared, none sent
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        reply += chunk
    s.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:300]
    assert "limit" in json.loads(body)["error"]
    status, payload = _request(port, "POST", "/sql", token, b" " * (2 << 20))  # sent whole
    assert status == 413 and "error" in json.loads(payload)
    assert check(k, "print('still here')").strip() == "still here"
