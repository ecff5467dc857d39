"""A real flowmetal kernel in a subprocess, driven through jupyter_client the
way a frontend drives it. Shared by the real-kernel tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import duckdb
from jupyter_client.manager import KernelManager

KERNEL_NAME = "flowmetal"


@dataclass
class Reply:
    status: str
    content: dict[str, Any]
    iopub: list[dict[str, Any]] = field(default_factory=list)

    def outputs(self) -> list[dict[str, Any]]:
        kinds = {"stream", "display_data", "execute_result", "error", "clear_output",
                 "update_display_data"}
        return [m for m in self.iopub if m["msg_type"] in kinds]

    def text(self) -> str:
        return "".join(m["content"]["text"] for m in self.iopub if m["msg_type"] == "stream")


class Kernel:
    # set by flow_kernel(): its history and the endpoint serving it
    path: Path
    url: str
    token: str

    def __init__(self, env: dict[str, str] | None = None, cwd: Path | None = None,
                 kernel_name: str = KERNEL_NAME):
        self.km = KernelManager(kernel_name=kernel_name)  # "python3": the standard kernel
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME")}
        full_env.update(env or {})
        extra = {"cwd": str(cwd)} if cwd else {}
        self.km.start_kernel(env=full_env, **extra)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 60, **kwargs: Any) -> Reply:
        msg_id = self.kc.execute(code, **kwargs)
        return self.collect(msg_id, timeout)

    def collect(self, msg_id: str, timeout: float = 60) -> Reply:
        content, iopub = collect(self.kc, msg_id, timeout)
        return Reply(content["status"], content, iopub)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.km.provisioner.process.wait()  # type: ignore[union-attr]
        self.kc.stop_channels()
        self.km.cleanup_resources()

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.km.is_alive():
            self.shutdown()


def collect(kc: Any, msg_id: str, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The reply to request ``msg_id`` on client ``kc`` and the IOPub messages
    it caused, up to the kernel's idle status; others' messages are skipped."""
    iopub: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        iopub.append(msg)
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], iopub


def query(history: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Read a history once its kernel has let go of it, as `fm sql` would:
    records a killed kernel left in its step log are replayed first."""
    from fm_kernel.record import steplog
    from fm_kernel.record.store import Store

    if steplog.pending_tail(history):
        steplog.replay_for_reader(history, Store.open)
    con = duckdb.connect(str(history), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def fm_cli(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The `fm` command beside this Python, with no FM_/JPY_ setting of the
    test run leaking into it (``env`` adds some back)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    full.update(env or {})
    return subprocess.run([str(Path(sys.executable).parent / "fm"), *args], capture_output=True,
                          text=True, env=full, timeout=300, **kw)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small disk (a tmpfs of ``size``, e.g. "8m") mounted at
    ``folder`` (made here) for the block; needs root."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def http_json(url: str, method: str = "GET", data: bytes | None = None, token: str | None = None,
              headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
    """One request to a kernel's endpoint: (status, its JSON body or None),
    an error status answered like any other."""
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"token {token}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def send_retrying(req: urllib.request.Request, refused: list | None = None, tries: int = 120,
                  timeout: float = 90) -> tuple[int, Any]:
    """One request as a sender must make it (docs/integrations.md,
    "Hand-overs"): a 503 is retried after its Retry-After; given ``refused``
    (which collects what was met: 503s, refused or broken connections),
    refused or broken connections are retried too, with backoff."""
    wait = 0.1
    for _ in range(tries):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return exc.code, json.loads(exc.read() or b"{}")
            if refused is not None:
                refused.append(503)
            time.sleep(float(exc.headers.get("Retry-After") or wait))
        except (urllib.error.URLError, ConnectionError) as exc:
            if refused is None:
                raise
            refused.append(type(exc).__name__)
            time.sleep(wait)
            wait = min(wait * 2, 2.0)
    raise AssertionError(f"{req.full_url}: no answer but 503s or refusals in {tries} tries")


def endpoint_info(history: Path, timeout: float = 30) -> dict[str, Any]:
    """The endpoint file of a kernel's history: the endpoint starts once the
    history is open, in the background after the kernel answers, so wait."""
    path = Path(str(history) + ".endpoint.json")
    wait_until(path.exists, timeout, what=f"{path.name} to be written")
    return json.loads(path.read_text())


def wait_until(pred, timeout: float = 30, what: str = "condition", poll: float = 0.05) -> None:
    """Poll ``pred`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


# -- what the flow and task tests share ------------------------------------------

def check(k: Kernel, code: str, timeout: float = 60) -> str:
    r = k.execute(code, timeout=timeout)
    assert r.status == "ok", (code, r.content.get("ename"), r.content.get("evalue"),
                              "\n".join(r.content.get("traceback") or []), r.text())
    return r.text()


def fails(k: Kernel, code: str) -> tuple[str, str]:
    r = k.execute(code)
    assert r.status == "error", (code, r.text())
    return r.content["ename"], r.content["evalue"]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                   key=lambda x: (x[0], x[1]))  # an end before a start at the same instant
    most = cur = 0
    for _, d in edges:
        cur += d
        most = max(most, cur)
    return most


def most_in_window(starts: list[float], window: float) -> int:
    """The most starts within any ``window`` seconds (what a rate limit bounds)."""
    starts = sorted(starts)
    return max(sum(1 for t in starts[i:] if t - s < window) for i, s in enumerate(starts))


FLOW_PRELUDE = "import os, time, json\nimport fm_kernel as fm\nimport fm_kernel.flows as flows"


@contextlib.contextmanager
def flow_kernel(history: Path, prelude: str = FLOW_PRELUDE) -> Iterator[Kernel]:
    """A kernel recording to ``history`` that has run ``prelude``, with
    ``path`` (the history), ``url`` and ``token`` (its endpoint) set."""
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, prelude)
        info = endpoint_info(history)
        k.path, k.url, k.token = history, info["url"], info["token"]
        yield k


# Code for a kernel (format it with d=<folder>): ``mark(name)`` appends a
# line to D/name each time it runs, so a test counts how often a piece of
# flow code ran across kill -9 (as DBOS's tests count with counters).
MARKS = r'''
D = {d!r}
def mark(name):
    with open(os.path.join(D, name), "a") as f:
        f.write("x\n")
'''

# ``hold(name)``: a mark, then a wait for D/go, in plain code between durable
# operations: where a test kills the kernel.
HOLD = r'''def hold(name):
    mark(name)
    while not os.path.exists(os.path.join(D, "go")):
        time.sleep(0.02)
'''
