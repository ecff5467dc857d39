"""Fuzz the kernel's loopback endpoint with 10,000 generated requests: wrong
methods, bad and missing tokens, malformed JSON, huge bodies, path tricks.
No 5xx, no crash, no file written anywhere, nothing delivered without the
token or a callback id, and the history intact afterwards."""

from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, query  # noqa: E402

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
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


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
        @given(METHODS, PATHS, tokens, BODIES)
        def one(method: str, path: str, token: str | None, body: bytes | None) -> None:
            headers = {"Content-Type": "application/json"}
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
            if resp.status == 200:
                assert token == f"token {info['token']}" or "/callbacks/" in path, (method, path, token)
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
