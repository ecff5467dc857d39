"""Addresses that outlive the kernel: a history keeps its endpoint port
across restarts (FM_ENDPOINT_PORT sets it), a kept port someone else took is
one line and another port, and FM_PUBLIC_URL is the base of callback URLs."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

from kernel_driver import Kernel, send_retrying, wait_until

FLOW = r'''
import fm_kernel.flows as fm
from pathlib import Path
URL_FILE = Path({url_file!r})

@fm.flow
def approval(item):
    cb = fm.callback()
    URL_FILE.write_text(cb.url)  # plain code: runs again on replay, writes the same URL
    answer = cb.wait(120)
    return {{"item": item, "approved": answer["approved"]}}
'''


def check(k: Kernel, code: str, timeout: float = 60) -> str:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.content.get("evalue"), "\n".join(r.content.get("traceback") or []))
    return r.text()


def post(url: str, body: dict) -> tuple[int, dict]:
    """As a sender must (docs/integrations.md): a 503 (`fm worker` or a kernel
    still restoring the flows it took over) is retried after its Retry-After."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    return send_retrying(req, tries=60, timeout=10)


def endpoint(history: Path) -> dict:
    return json.loads(Path(str(history) + ".endpoint.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_callback_url_from_a_killed_kernel_resumes_the_run_in_the_next(tmp_path: Path) -> None:
    history = tmp_path / "h" / "history.duckdb"
    url_file = tmp_path / "cb_url"
    env = {"FM_HISTORY": str(history)}
    k = Kernel(env=env)
    try:
        check(k, FLOW.format(url_file=str(url_file)))
        run_id = check(k, "r = approval.start('invoice-7'); print(r.id)").strip()
        wait_until(lambda: url_file.exists() and url_file.read_text(), what="the callback URL")
        url = url_file.read_text()
        first_pid = endpoint(history)["pid"]
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    url_file.unlink()
    with Kernel(env=env) as k2:
        check(k2, "1")  # the history is open and the namespace restored
        wait_until(lambda: endpoint(history)["pid"] != first_pid, what="the new kernel's endpoint")
        wait_until(lambda: url_file.exists(), what="the resumed run to wait again")
        assert url_file.read_text() == url, "the resumed run's callback has another URL"
        status, body = post(url, {"approved": True})  # the URL handed out before the kill
        assert status == 200 and body["duplicate"] is False, body
        out = check(k2, f"import fm_kernel as fm\nprint(fm.get_run({run_id!r}).result(30))")
        assert "'approved': True" in out and "invoice-7" in out, out


def test_fm_endpoint_port_and_public_url(tmp_path: Path) -> None:
    history = tmp_path / "h" / "history.duckdb"
    port = free_port()
    env = {"FM_HISTORY": str(history), "FM_ENDPOINT_PORT": str(port),
           "FM_PUBLIC_URL": "https://fm.example.org/hooks/"}
    with Kernel(env=env) as k:
        check(k, FLOW.format(url_file=str(tmp_path / "cb_url")))
        check(k, "r = approval.start('x')")
        wait_until(lambda: (tmp_path / "cb_url").exists(), what="the callback URL")
        url = (tmp_path / "cb_url").read_text()
        assert url.startswith("https://fm.example.org/hooks/callbacks/"), url
        assert endpoint(history)["port"] == port
        # the path after the public base is served here
        local = endpoint(history)["url"] + url[len("https://fm.example.org/hooks"):]
        status, _ = post(local, {"approved": False})
        assert status == 200
        assert "'approved': False" in check(k, "print(r.result(30))")


def test_a_kept_port_taken_by_someone_else_is_one_line_and_another_port(tmp_path: Path) -> None:
    history = tmp_path / "h" / "history.duckdb"
    env = {"FM_HISTORY": str(history)}
    with Kernel(env=env) as k:
        check(k, "1")
        kept = endpoint(history)["port"]
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    try:
        deadline = time.monotonic() + 10
        while True:  # the old kernel's socket may linger a moment
            try:
                squatter.bind(("127.0.0.1", kept))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        squatter.listen()
        with Kernel(env=env) as k2:
            out = check(k2, "1")
            got = endpoint(history)["port"]
            assert got != kept
            notes = [ln for ln in out.splitlines() if "taken" in ln]
            assert len(notes) == 1 and f"port {kept}" in notes[0] and str(got) in notes[0], out
    finally:
        squatter.close()
    with Kernel(env=env) as k3:  # the kept port is still the one asked for
        check(k3, "1")
        assert endpoint(history)["port"] == kept


def test_callback_url_from_a_killed_kernel_resolves_under_fm_worker(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from kernel_driver import query

    history = tmp_path / "h" / "history.duckdb"
    url_file = tmp_path / "cb_url"
    k = Kernel(env={"FM_HISTORY": str(history)})
    try:
        check(k, FLOW.format(url_file=str(url_file)))
        run_id = check(k, "r = approval.start('po-9'); print(r.id)").strip()
        wait_until(lambda: url_file.exists() and url_file.read_text(), what="the callback URL")
        url, first_pid = url_file.read_text(), endpoint(history)["pid"]
        k.kill9()
    finally:
        if k.km.is_alive():
            k.shutdown()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    worker = subprocess.Popen([str(Path(sys.executable).parent / "fm"), "worker", "--history", str(history)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: Path(str(history) + ".endpoint.json").exists()
                   and endpoint(history)["pid"] != first_pid, what="the worker's endpoint")
        status, body = post(url, {"approved": True})
        assert status == 200 and body["duplicate"] is False, body
        token = endpoint(history)["token"]
        req = urllib.request.Request(f"{endpoint(history)['url']}/runs/{run_id}/result?wait=30",
                                     headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=40) as resp:
            info = json.loads(resp.read())
        assert info["status"] == "succeeded" and info["result"] == {"item": "po-9", "approved": True}, info
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert query(history, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)]
