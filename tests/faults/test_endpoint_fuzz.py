"""Fuzz the kernel's loopback endpoint with 10,000 generated requests: half
drawn from its OpenAPI document (every documented operation with junk path
parameters and bodies of the documented shape or not: tests/openapi_fuzz.py),
half free-form: wrong methods, bad and missing tokens, malformed JSON, JSON
nested far too deep, huge bodies, path tricks; then the same kinds of request while slow bodies
and more connections than the cap are held open.
No 5xx, no crash, no file written anywhere, nothing delivered without the
token or a callback id, and the history intact afterwards."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, endpoint_info, query  # noqa: E402
from openapi_fuzz import documented, public  # noqa: E402

REQUESTS = int(os.environ.get("FM_FUZZ_REQUESTS", "10000"))

SEGMENTS = st.sampled_from([
    "sql", "runs", "flows", "callbacks", "signals", "..", ".", "%2e%2e", "%2F", "etc", "passwd",
    "x" * 300, "🙂", "", "nightly", "approve", "0" * 32, "%00", "runs;", "sql?x=1",
])
KNOWN = st.sampled_from(["/sql", "/sql/", "/runs/abc/signals/go", "/flows/nightly/runs",
                         "/runs/" + "0" * 32, "/callbacks/" + "0" * 32, "/callbacks/short"])
PATHS = st.one_of(
    KNOWN, KNOWN, KNOWN,
    st.lists(SEGMENTS, min_size=0, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80)
      .map(lambda s: "/" + s.replace(" ", "")),
)
BODIES = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.just(b"{"), st.just(b"null"), st.just(b"[]"),
    st.builds(lambda q: json.dumps({"query": q}).encode(), st.text(max_size=60)),
    st.builds(lambda q: json.dumps({"query": q}).encode(),
              st.sampled_from(["DROP TABLE fm_events", "SELECT * FROM read_text('/etc/passwd')",
                               "COPY steps TO '/tmp/x.csv'", "SELECT 1; SELECT 2",
                               "ATTACH '/tmp/evil.duckdb'", "SELECT count(*) FROM steps"])),
    st.builds(lambda args: json.dumps({"args": args}).encode(), st.lists(st.integers(), max_size=3)),
    st.integers(min_value=1, max_value=3).map(lambda n: b"a" * (n * 700_000)),
    st.sampled_from([10, 65, 1000, 100_000]).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([65, 5000]).map(
        lambda n: json.dumps({"query": "SELECT 1", "x": None}).replace("null", "[" * n + "]" * n).encode()),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
FREE_FORM = st.tuples(METHODS, PATHS, st.just({}), BODIES)
REQUESTS_DRAWN = st.one_of(documented(), FREE_FORM)


@pytest.mark.timeout(900)
def test_ten_thousand_generated_requests(tmp_path: Path) -> None:
    home = tmp_path / "hist"
    history = home / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute("before = 'intact'").status == "ok"
        info = json.loads(Path(str(history) + ".endpoint.json").read_text())
        host, port = "127.0.0.1", info["port"]
        tokens = st.sampled_from([None, f"token {info['token']}", "token wrong", "token ",
                                  f"Token {info['token']}", "bearer x", info["token"],
                                  f"token {info['token']}x"])
        files_before = sorted(p for p in tmp_path.rglob("*"))
        seen: dict[int, int] = {}
        conn = [http.client.HTTPConnection(host, port, timeout=30)]

        @settings(max_examples=REQUESTS, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(REQUESTS_DRAWN, tokens)
        def one(request: tuple, token: str | None) -> None:
            method, path, extra, body = request
            headers = {"Content-Type": "application/json", **extra}
            if token is not None:
                headers["Authorization"] = token
            # non-ASCII goes percent-encoded, as any HTTP client sends it
            path = urllib.parse.quote(path, safe="/%;?=.:@&+$,!~*'()[]#")
            try:
                conn[0].request(method, path, body=body, headers=headers)
                resp = conn[0].getresponse()
                payload = resp.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                # the server may close a connection it will not read (huge
                # or malformed requests); a new one must still be served
                conn[0].close()
                conn[0] = http.client.HTTPConnection(host, port, timeout=30)
                return
            seen[resp.status] = seen.get(resp.status, 0) + 1
            assert resp.status < 500, (method, path, token, body[:80] if body else body, payload[:200])
            if 200 <= resp.status < 300:  # only the document's public routes answer without it
                assert token == f"token {info['token']}" or public(path), (method, path, token)
            if method != "HEAD" and resp.status >= 400:
                assert "error" in json.loads(payload), payload[:200]

        one()
        conn[0].close()
        print(f"{REQUESTS} requests, status counts: {dict(sorted(seen.items()))}")
        assert sum(seen.values()) > REQUESTS * 0.9  # most got an answer
        r = k.execute("print(before)")
        assert r.status == "ok" and r.text().strip() == "intact"  # the kernel lives, state intact
        files_after = sorted(p for p in tmp_path.rglob("*"))
        new = [p for p in files_after if p not in files_before and home not in p.parents]
        assert new == [], f"files written outside the history folder: {new}"
    kinds = {r[0] for r in query(history, "SELECT DISTINCT kind FROM events")}
    assert not kinds & {"signal", "callback", "run_started"}, kinds  # nothing was delivered
    assert [r[0] for r in query(history, "SELECT code FROM steps ORDER BY step")] == \
        ["before = 'intact'", "print(before)"]


def test_slow_bodies_and_connections_past_the_cap_get_no_5xx(tmp_path: Path) -> None:
    history = tmp_path / "hist" / "h.duckdb"
    env = {"FM_HISTORY": str(history), "FM_ENDPOINT_MAX_CONNECTIONS": "64",
           "FM_ENDPOINT_BODY_TIMEOUT": "3", "FM_ENDPOINT_HEADER_TIMEOUT": "3"}
    with Kernel(env=env) as k:
        info = endpoint_info(history)
        port, auth = info["port"], f"token {info['token']}"
        held = []
        for i in range(120):  # idle connections, past the cap of 64
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for i in range(8):  # slow bodies: 10 of the 200 bytes declared, then nothing
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /sql HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth.encode()
                      + b"\r\nContent-Length: 200\r\n\r\n" + b'{"query":')
            held.append(s)
        for s in held[:40]:
            s.close()  # make room under the cap for the requests below
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + 20
        for body in [b'{"query": "SELECT 1"}', b"[" * 100_000 + b"]" * 100_000, b"{", b"null"] * 10:
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    c.request("POST", "/sql", body=body, headers={"Authorization": auth})
                    resp = c.getresponse()
                    resp.read()
                    c.close()
                    break
                except (http.client.HTTPException, OSError):
                    # refused past the cap: retried until the timeouts free slots
                    assert time.monotonic() < deadline, "no connection served within 20 s"
                    time.sleep(0.2)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        for s in held:
            s.close()
        assert all(code < 500 for code in statuses), statuses
        assert statuses.get(200) == 10 and statuses.get(400, 0) >= 20, statuses
        r = k.execute("print('alive')")
        assert r.status == "ok" and r.text().strip() == "alive"
