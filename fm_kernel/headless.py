"""`fm run`: execute a notebook headless with the flowmetal kernel, recording
its history beside the notebook, with progress and an honest exit status."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from .tables import first_line


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
            self.stream.write(f"[{index + 1}/{self.total}] {status:<5} {took:6.2f}s  {first_line(code)[:60]}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_notebook(path: Path, out: Path | None = None, history: Path | None = None,
                 stream: TextIO = sys.stderr) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = path.absolute()
    if not path.exists():
        print(f"fm run: no notebook at {path}", file=stream)
        return 2
    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    progress = Progress(len(code_cells), stream)
    position = {cell_index: n for n, cell_index in enumerate(code_cells)}

    def on_start(cell: Any, cell_index: int) -> None:
        progress.start(position.get(cell_index, 0), cell.source)

    def on_done(cell: Any, cell_index: int, execute_reply: Any) -> None:
        status = (execute_reply or {}).get("content", {}).get("status", "ok")
        progress.finish(position.get(cell_index, 0), cell.source, status)

    # The kernel finds its history from these (location.py).
    env = {k: v for k, v in os.environ.items() if k not in ("FM_HISTORY", "JPY_SESSION_NAME")}
    env["FM_NOTEBOOK"] = str(path)
    if history is not None:
        env["FM_HISTORY"] = str(history)
    from jupyter_client.manager import KernelManager

    # IPC sockets in a private temp folder: no TCP port for a headless run to
    # expose, and no warning from ipykernel about unencrypted TCP.
    runtime_dir = tempfile.mkdtemp(prefix="fm-run-")
    km = KernelManager(kernel_name="flowmetal", transport="ipc",
                       connection_file=os.path.join(runtime_dir, "kernel.json"))
    client = NotebookClient(
        nb, km=km, kernel_name="flowmetal", timeout=None, allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_start, on_cell_executed=on_done,
    )
    target = out.absolute() if out else path
    failed: CellExecutionError | None = None
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        failed = exc
    finally:
        progress.close()
        nbformat.write(nb, target)
        shutil.rmtree(runtime_dir, ignore_errors=True)
    if failed is not None:
        print(f"fm run: a cell failed in {path.name}; executed notebook written to {target}", file=stream)
        print(str(failed), file=stream)
        return 1
    print(f"fm run: {len(code_cells)} cells ok; executed notebook written to {target}", file=stream)
    return 0
