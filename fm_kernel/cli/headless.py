"""`fm run`: execute a notebook headless with the flowmetal kernel, recording
its history beside the notebook, with progress, parameters (papermill's
convention) and resume: a run of the same notebook and parameters that failed
or was interrupted continues after its last completed cell instead of
starting over.

A run is identified by a key (notebook path + parameters) that the kernel
writes into its kernel_started event; the cells a run has completed are the
chain of its steps (each step's parent is the one before, across resumed
sessions too, because a resume checks out the last completed step first).

As papermill does: the executed notebook goes to another file (default
NAME.out.ipynb beside the input), cells after the one that stopped the run
lose their old outputs and counts, and a kernel that dies is noticed within
about a second (the client is asynchronous, so waiting on the kernel never
blocks the loop that watches it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, TextIO, TypeVar

from .. import errors
from ..record import location
from . import parameters
from ..record.recorder import is_history_query
from ..tables import first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
KERNEL_WATCH_S = 0.5        # how often a wait on the kernel checks it is alive
INTERRUPT_GRACE_S = 3.0     # after Ctrl-C, how long the cell gets to stop itself
LOCK_WAIT_S = 10.0          # how long a finishing run's kernel gets to let go


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
    """What an earlier unfinished run of the same notebook completed."""

    cells: int                      # leading recorded cells that completed
    step: int                       # the step holding the state after them
    records: list[Any] = field(default_factory=list)  # their StepRecords, in order
    total: int = 0                  # recorded cells in the notebook
    failed: tuple[int, str, str] | None = None  # (recorded position, code, error) of a failed cell

    def describe(self, number: Any, total: int) -> str:
        """One line; ``number`` maps a recorded position to the cell number
        shown, of ``total`` (as the progress lines count: history queries too)."""
        how = "an interrupted run"
        if self.failed:
            at, code, error = self.failed
            how = f"a failed run, whose cell {number(at)} ({first_line(code)[:40]!r}) raised {error}"
        return (f"resuming after cell {number(self.cells - 1)} of {total} from {how} "
                f"(state of step {self.step}); cells before it are not run again")


def run_key(notebook: Path, params: dict[str, Any]) -> str:
    blob = json.dumps({"notebook": str(notebook), "params": params}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def default_output(notebook: Path) -> Path:
    """NAME.out.ipynb beside NAME.ipynb: the input is never overwritten unasked."""
    return notebook.with_name(f"{notebook.stem}.out.ipynb")


def plan_resume(history: Path, key: str, sources: list[str]) -> Resume | None:
    """The completed prefix of the last run with ``key``, if it did not finish."""

    if not history.exists():
        return None
    store = open_read_waiting(history)
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
        failed = None
        if chain[-1][3] == "error":
            rec = store.step(chain[-1][0])
            error = f"{rec.error_name}: {first_line(rec.error_value)}" if rec else "an error"
            failed = (len(chain) - 1, chain[-1][2], error)
        return Resume(done, chain[done - 1][0], [store.step(r[0]) for r in chain[:done]],
                      len(sources), failed)
    finally:
        store.close()


def open_read_waiting(history: Path, wait_s: float = LOCK_WAIT_S):
    """Open ``history`` read-only. A killed run's kernel notices its parent is
    gone within a second or two and lets go of the file: that is waited out;
    any other holder (a notebook's kernel) is refused at once."""
    from ..record.store import Store

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Store.open(history, read_only=True)
        except errors.HistoryLocked as exc:
            if time.monotonic() >= deadline or not _winding_down(exc.pid):
                raise
            time.sleep(0.2)


def _winding_down(pid: str | None) -> bool:
    """Whether the holder may be an earlier `fm run`'s kernel (which exits by itself)."""
    if not pid:
        return True
    try:
        return b"FM_RUN_KEY=" in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return not Path("/proc/self/environ").exists()  # no /proc here: cannot tell, wait


def held_message(exc: errors.HistoryLocked) -> str:
    from . import remote

    pid = exc.pid
    if not pid:
        info = remote.live_endpoint(exc.path)
        pid = str(info["pid"]) if info else None
    holder = f"process {pid}" if pid else "another process"
    return (f"history {exc.path} is in use by {holder} (a kernel with this notebook open?); "
            "shut that kernel down, or record this run elsewhere with --history OTHER.duckdb")


def flowmetal_kernelspec() -> dict[str, str]:
    """The kernelspec metadata the executed notebook names (the kernel that ran it)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("flowmetal")
        return {"name": "flowmetal", "display_name": spec.display_name, "language": spec.language}
    except NoSuchKernel:
        return {"name": "flowmetal", "display_name": "Flowmetal (Python 3)", "language": "python"}


def run_notebook(path: Path, out: Path | None = None, history: Path | None = None,
                 params: dict[str, Any] | None = None, fresh: bool = False,
                 stream: TextIO = sys.stderr) -> int:
    path = path.absolute()
    if not path.exists():
        print(f"fm run: no notebook at {path}", file=stream)
        return 2
    job = Job(path, (out or default_output(path)).absolute(), history, params or {}, stream)
    try:
        job.plan(fresh)
    except errors.HistoryLocked as exc:
        print(f"fm run: {held_message(exc)}", file=stream)
        return 1
    return asyncio.run(job.run())


class Job:
    """One `fm run`: the notebook, what an earlier run completed, and where
    this one stopped (``reached``: the position of the last code cell begun)."""

    def __init__(self, path: Path, target: Path, history: Path | None,
                 params: dict[str, Any], stream: TextIO):
        import nbformat

        self.path, self.target, self.history, self.stream = path, target, history, stream
        self.nb = nbformat.read(path, as_version=4)
        parameters.inject(self.nb, params)
        self.code_cells = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
        self.recorded = [i for i in self.code_cells if not is_history_query(self.nb.cells[i].source)]
        self.history_file = history or location.history_path({"FM_NOTEBOOK": str(path)})
        self.key = run_key(path, params)
        self.resume: Resume | None = None
        self.skip: set[int] = set()
        self.reached = -1
        self.language_info: dict[str, Any] | None = None
        self.interrupted = False
        self._grace: asyncio.TimerHandle | None = None
        self.progress = Progress(len(self.code_cells), stream)

    def plan(self, fresh: bool) -> None:
        """Find what to resume; raises HistoryLocked when another process holds the history."""
        if fresh:
            if self.history_file.exists():
                open_read_waiting(self.history_file).close()
            return
        sources = [self.nb.cells[i].source for i in self.recorded]
        self.resume = plan_resume(self.history_file, self.key, sources)
        if self.resume is not None:
            self.skip = set(self.recorded[:self.resume.cells])

    def kernel_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("FM_HISTORY", "JPY_SESSION_NAME")}
        env.update(FM_NOTEBOOK=str(self.path), FM_RUN_KEY=self.key, FM_RESUME="never")
        if self.history is not None:
            env["FM_HISTORY"] = str(self.history)
        return env

    async def run(self) -> int:
        from jupyter_client.manager import AsyncKernelManager
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, DeadKernelError

        # IPC sockets in a private temp folder: no TCP port for a headless run to
        # expose, and no warning from ipykernel about unencrypted TCP.
        runtime_dir = tempfile.mkdtemp(prefix="fm-run-")
        km = AsyncKernelManager(kernel_name="flowmetal", transport="ipc",
                                connection_file=os.path.join(runtime_dir, "kernel.json"))
        client = NotebookClient(self.nb, km=km, kernel_name="flowmetal", timeout=None,
                                allow_errors=False, resources={"metadata": {"path": str(self.path.parent)}})
        started, outcome, death = False, "ok", ""
        failure: BaseException | None = None
        try:
            # the kernel is started here, not in nbclient's setup_kernel: its
            # signal handler would kill the kernel on Ctrl-C (see _trap_signals)
            self._trap_signals(km)
            client.reset_execution_trackers()
            await client.async_start_new_kernel(env=self.kernel_env())
            await client.async_start_new_kernel_client()
            started = True
            await self._execute(client, km)
        except CellExecutionError as exc:
            outcome = "interrupted" if self.interrupted else "failed"
            failure = exc
        except (DeadKernelError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not self.interrupted:
                raise
            outcome, death = ("interrupted" if self.interrupted else "died"), _death(km)
        except RuntimeError as exc:
            if started:
                raise
            outcome, failure = "no kernel", exc
        finally:
            self._untrap_signals()
            self.progress.close()
            self._write_notebook()
            await _stop_kernel(km, client)
            shutil.rmtree(runtime_dir, ignore_errors=True)
        if outcome == "failed":
            return self._report_failure(failure)
        if outcome == "no kernel":
            print(f"fm run: the flowmetal kernel did not start ({failure}); its own output is above",
                  file=self.stream)
            return 1
        if outcome != "ok":
            return self._report_stop(outcome, death)
        ran = len(self.code_cells) - len(self.skip)
        queries = len(self.code_cells) - len(self.recorded)
        why = (f" ({queries} only read the history, like %fm log, and are not steps)"
               if queries else "")
        print(f"fm run: {ran} cells run, {len(self.skip)} resumed{why}; executed notebook "
              f"written to {self.target}", file=self.stream)
        return 0

    async def _execute(self, client: Any, km: Any) -> None:
        from jupyter_core.utils import ensure_async
        from nbclient.exceptions import CellExecutionError

        msg_id = await ensure_async(client.kc.kernel_info())
        info = await _while_alive(km, client.async_wait_for_reply(msg_id))
        self.language_info = (info or {}).get("content", {}).get("language_info")
        if self.resume is not None and not await _while_alive(km, self._checkout(client.kc)):
            self.skip, self.resume = set(), None
        count = 0
        for n, index in enumerate(self.code_cells):
            cell = self.nb.cells[index]
            self.reached = n
            count += 1
            self.progress.start(n, cell.source)
            if index in self.skip:
                self._restore(cell, self.recorded.index(index), count)
                self.progress.finish(n, cell.source, "resumed")
                continue
            try:
                # our own count, not the kernel's: one sequence across resumed and run cells
                await client.async_execute_cell(cell, index, execution_count=count)
            except CellExecutionError:
                cell.execution_count = count
                self.progress.finish(n, cell.source, "stopped" if self.interrupted else "error")
                raise
            except BaseException:
                self.progress.finish(n, cell.source, "stopped" if self.interrupted else "died")
                raise
            self.progress.finish(n, cell.source, "ok")

    def _restore(self, cell: Any, position: int, count: int) -> None:
        import nbformat

        from ..record.recorder import unflatten_outputs

        rec = self.resume.records[position]  # type: ignore[union-attr]
        cell.outputs = [nbformat.from_dict(o) for o in unflatten_outputs(rec.outputs)]
        cell.execution_count = count

    async def _checkout(self, kc: Any) -> bool:
        """Put the kernel at the state after the last completed cell."""
        resume = self.resume
        assert resume is not None
        said: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                said.append(msg["content"]["text"])

        reply = await kc.execute_interactive(f"%fm checkout {resume.step}", silent=True,
                                             output_hook=hook, timeout=600)
        if reply["content"]["status"] != "ok":
            print(f"fm run: could not resume ({''.join(said).strip() or reply['content'].get('evalue')});"
                  " running every cell", file=self.stream)
            return False
        # the kernel's In [n] (and so the history's counts) continue the resumed ones
        await kc.execute_interactive(f"get_ipython().execution_count = {len(self.skip) + 1}",
                                     silent=True, timeout=60)
        def number(at: int) -> int | str:
            return self.code_cells.index(self.recorded[at]) + 1 if at < len(self.recorded) else at + 1

        print(f"fm run: {resume.describe(number, len(self.code_cells))}", file=self.stream)
        return True

    def _write_notebook(self) -> None:
        import nbformat

        # as papermill does: what did not run this time shows nothing from before
        for index in self.code_cells[self.reached + 1:]:
            self.nb.cells[index].outputs = []
            self.nb.cells[index].execution_count = None
        self.nb.metadata["kernelspec"] = flowmetal_kernelspec()
        if self.language_info:
            self.nb.metadata["language_info"] = self.language_info
        nbformat.write(self.nb, self.target)

    def _report_failure(self, exc: BaseException | None) -> int:
        print(f"fm run: a cell failed in {self.path.name}; executed notebook written to "
              f"{self.target}", file=self.stream)
        text = str(exc)
        print(text if self.stream.isatty() else _ANSI.sub("", text), file=self.stream)
        print(f"fm run: fix it and {self._resume_hint()}", file=self.stream)
        return 1

    def _resume_hint(self) -> str:
        # a resume skips recorded cells only (history queries run again)
        done = [n for n, i in enumerate(self.code_cells[:max(self.reached, 0)]) if i in self.recorded]
        if not done:
            return "run the same command again"
        return f"run the same command again to resume after cell {done[-1] + 1} (--fresh starts over)"

    def _report_stop(self, how: str, death: str) -> int:
        n, code = self.reached, 130 if how == "interrupted" else 1
        what = "interrupted" if how == "interrupted" else f"the kernel died{death}"
        if n < 0:
            print(f"fm run: {what} before the first cell; nothing ran", file=self.stream)
            return code
        source = first_line(self.nb.cells[self.code_cells[n]].source)[:40]
        print(f"fm run: {what} during cell {n + 1} of {len(self.code_cells)} ({source!r}); "
              f"executed notebook written to {self.target}", file=self.stream)
        print(f"fm run: the cells before it are recorded; {self._resume_hint()}", file=self.stream)
        return code

    def _trap_signals(self, km: Any) -> None:
        """Ctrl-C (or SIGTERM) interrupts the running cell, as in a notebook;
        if it does not stop within a few seconds, or on a second Ctrl-C, or
        when no cell runs yet, the run is cancelled and the kernel shut down.
        (nbclient's handler kills the kernel, and the run looked like a crash.)"""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if self.interrupted or self.reached < 0:  # a second one, or no cell is running
                self.interrupted = True
                task.cancel()  # type: ignore[union-attr]
                return
            self.interrupted = True
            asyncio.ensure_future(km.interrupt_kernel())
            self._grace = loop.call_later(INTERRUPT_GRACE_S, task.cancel)  # type: ignore[union-attr]

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (RuntimeError, NotImplementedError):
                pass

    def _untrap_signals(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (RuntimeError, NotImplementedError):
                pass


async def _while_alive(km: Any, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the kernel dies first (then DeadKernelError)."""
    from nbclient.exceptions import DeadKernelError

    task = asyncio.ensure_future(awaitable)
    while True:
        done, _ = await asyncio.wait({task}, timeout=KERNEL_WATCH_S)
        if done:
            return task.result()
        if not await km.is_alive():
            task.cancel()
            raise DeadKernelError("Kernel died")


def _death(km: Any) -> str:
    """' (killed by SIGKILL)' or ' (exit code 3)', from the kernel process's status."""
    code = getattr(getattr(km.provisioner, "process", None), "returncode", None)
    if code is None:
        return ""
    if code < 0:
        try:
            return f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f" (killed by signal {-code})"
    return f" (exit code {code})"


async def _stop_kernel(km: Any, client: Any) -> None:
    """End the kernel cleanly, so its history records a clean stop (nbclient
    leaves a kernel it did not create running); a dead one is only reaped."""
    try:
        if km.has_kernel and await km.is_alive():
            await km.shutdown_kernel()
        elif km.has_kernel:
            await km.cleanup_resources()
    except Exception:
        log.warning("fm run: could not shut the kernel down cleanly", exc_info=True)
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
