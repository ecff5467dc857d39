"""`fm run`: execute a notebook headless with the flowmetal kernel, recording
its history beside the notebook, with progress, parameters (papermill's
convention) and resume: a run of the same notebook and parameters that was
interrupted continues after its last completed cell instead of starting over.

A run is identified by a key (notebook path + parameters) that the kernel
writes into its kernel_started event; the cells a run has completed are the
chain of its steps (each step's parent is the one before, across resumed
sessions too, because a resume checks out the last completed step first).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import errors
from ..record import location
from . import parameters
from ..record.recorder import is_history_query
from ..tables import first_line


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Progress:
    """One line per cell; redrawn in place on a terminal, appended otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.started: float = 0.0

    def start(self, index: int, code: str) -> None:
        self.started = time.monotonic()
        if self.tty:
            done = int(30 * index / max(self.total, 1))
            bar = "█" * done + "·" * (30 - done)
            self.stream.write(f"\r{bar} {index + 1}/{self.total} {first_line(code)[:40]:<40}")
            self.stream.flush()

    def finish(self, index: int, code: str, status: str) -> None:
        took = time.monotonic() - self.started
        if not self.tty:
            self.stream.write(f"[{index + 1}/{self.total}] {status:<7} {took:6.2f}s  {first_line(code)[:60]}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Resume:
    """What an earlier interrupted run of the same notebook completed."""

    cells: int                      # leading recorded cells that completed
    step: int                       # the step holding the state after them
    records: list[Any] = field(default_factory=list)  # their StepRecords, in order
    total: int = 0                  # recorded cells in the notebook


def run_key(notebook: Path, params: dict[str, Any]) -> str:
    blob = json.dumps({"notebook": str(notebook), "params": params}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def plan_resume(history: Path, key: str, sources: list[str]) -> Resume | None:
    """The completed prefix of the last run with ``key``, if it did not finish."""

    if not history.exists():
        return None
    store = _open_read_waiting(history)
    try:
        kernels, rows = store.session_steps(key)
        if not kernels:
            return None
        by_step = {r[0]: r for r in rows}
        last_session = [r for r in rows if r[4] == kernels[-1]]
        if not last_session:
            return None
        chain, current = [], max(r[0] for r in last_session)
        while current in by_step:
            chain.append(by_step[current])
            current = by_step[current][1]
        chain.reverse()
        done = 0
        for row, code in zip(chain, sources):
            if row[3] != "ok" or row[2] != code:
                break
            done += 1
        finished = done == len(sources) == len(chain)
        if done == 0 or finished:
            return None
        return Resume(done, chain[done - 1][0], [store.step(r[0]) for r in chain[:done]], len(sources))
    finally:
        store.close()


def _open_read_waiting(history: Path, wait_s: float = 10.0):
    """A killed run's kernel notices its parent is gone within a second or
    two and lets go of the file; wait that out."""
    from ..record.store import Store

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Store.open(history, read_only=True)
        except errors.HistoryLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def run_notebook(path: Path, out: Path | None = None, history: Path | None = None,
                 params: dict[str, Any] | None = None, fresh: bool = False,
                 stream: TextIO = sys.stderr) -> int:
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from ..record.recorder import unflatten_outputs

    path = path.absolute()
    if not path.exists():
        print(f"fm run: no notebook at {path}", file=stream)
        return 2
    nb = nbformat.read(path, as_version=4)
    params = params or {}
    parameters.inject(nb, params)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    recorded = [i for i in code_cells if not is_history_query(nb.cells[i].source)]
    history_file = history or location.history_path({"FM_NOTEBOOK": str(path)})
    key = run_key(path, params)
    resume = None if fresh else plan_resume(history_file, key, [nb.cells[i].source for i in recorded])

    env = {k: v for k, v in os.environ.items() if k not in ("FM_HISTORY", "JPY_SESSION_NAME")}
    env.update(FM_NOTEBOOK=str(path), FM_RUN_KEY=key, FM_RESUME="never")
    if history is not None:
        env["FM_HISTORY"] = str(history)
    # IPC sockets in a private temp folder: no TCP port for a headless run to
    # expose, and no warning from ipykernel about unencrypted TCP.
    runtime_dir = tempfile.mkdtemp(prefix="fm-run-")
    km = KernelManager(kernel_name="flowmetal", transport="ipc",
                       connection_file=os.path.join(runtime_dir, "kernel.json"))
    client = NotebookClient(nb, km=km, kernel_name="flowmetal", timeout=None, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    progress = Progress(len(code_cells), stream)
    target = out.absolute() if out else path
    failed: CellExecutionError | None = None
    skip = set(recorded[:resume.cells]) if resume else set()
    try:
        client.reset_execution_trackers()
        with client.setup_kernel(env=env):
            if resume is not None and not _checkout(client, resume, stream):
                skip, resume = set(), None
            for n, index in enumerate(code_cells):
                cell = nb.cells[index]
                progress.start(n, cell.source)
                if index in skip:
                    rec = resume.records[recorded.index(index)]  # type: ignore[union-attr]
                    cell.outputs = [nbformat.from_dict(o) for o in unflatten_outputs(rec.outputs)]
                    cell.execution_count = rec.execution_count
                    progress.finish(n, cell.source, "resumed")
                    continue
                try:
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                except CellExecutionError:
                    progress.finish(n, cell.source, "error")
                    raise
                progress.finish(n, cell.source, "ok")
    except CellExecutionError as exc:
        failed = exc
    finally:
        progress.close()
        nbformat.write(nb, target)
        # nbclient leaves a kernel it did not create running; end it cleanly
        # so its history records a clean stop (no auto-resume next time)
        if km.has_kernel:
            km.shutdown_kernel()
        shutil.rmtree(runtime_dir, ignore_errors=True)
    if failed is not None:
        print(f"fm run: a cell failed in {path.name}; executed notebook written to {target}", file=stream)
        text = str(failed)
        print(text if stream.isatty() else _ANSI.sub("", text), file=stream)
        return 1
    ran = len(code_cells) - len(skip)
    print(f"fm run: {ran} cells run, {len(skip)} resumed; executed notebook written to {target}",
          file=stream)
    return 0


def _checkout(client: Any, resume: Resume, stream: TextIO) -> bool:
    """Put the kernel at the state after the last completed cell."""
    said: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            said.append(msg["content"]["text"])

    reply = client.kc.execute_interactive(f"%fm checkout {resume.step}", silent=True,
                                          output_hook=hook, timeout=600)
    if reply["content"]["status"] != "ok":
        print(f"fm run: could not resume ({''.join(said).strip() or reply['content'].get('evalue')});"
              " running every cell", file=stream)
        return False
    print(f"fm run: resuming after cell {resume.cells} of {resume.total} from an interrupted run "
          f"(state of step {resume.step}); cells before it are not run again", file=stream)
    return True
