"""FlowmetalKernel: ipykernel's IPythonKernel plus a durable record of every
cell. Thin on purpose: the recording is in recorder.py, the state in
runtime.py; this file only hooks them into the request cycle."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from ipykernel.ipkernel import IPythonKernel

from . import __version__
from .idle import IdleRechecks
from .state import navigate
from . import runtime
from .record import identity
from .record.recorder import CellRecorder, is_history_query
from .state.states import States


def _print_notices(notices: list[str]) -> None:
    for notice in notices:
        print(notice, file=sys.stderr)
    if notices:  # before the cell's own output, not after it
        sys.stderr.flush()


def _kernel_id_from_connection_file() -> str | None:
    try:
        from ipykernel.kernelapp import IPKernelApp

        if IPKernelApp.initialized():
            name = Path(IPKernelApp.instance().connection_file).stem
            # Jupyter servers name it kernel-<id>.json; other launchers use
            # temp names that identify nothing, so those get a fresh id.
            return name[len("kernel-"):] if name.startswith("kernel-") else None
    except Exception:
        pass
    return None


def _log_to_kernel_log() -> None:
    """The package's loggers (background threads: journal, scheduler, endpoint,
    widget loader) write to the kernel process's own stderr, which Jupyter
    keeps as the kernel log. Through the root logger they would land in the
    output of whatever cell is running."""
    import logging

    root = logging.getLogger("fm_kernel")
    if not root.handlers:
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(logging.Formatter("[flowmetal %(levelname)s %(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("FM_LOG_LEVEL", "INFO").upper())
        root.propagate = False


def _flush_pending(*streams: Any) -> None:
    """Flush streams that hold output. ipykernel flushes again after we
    return, but the record needs every output first; an idle OutStream's
    flush still costs a round trip to the IOPub thread, so skip those."""
    for stream in streams:
        if stream is not None and (getattr(stream, "_flush_pending", True)
                                   or getattr(stream, "_subprocess_flush_pending", False)):
            stream.flush()


class FlowmetalKernel(IPythonKernel):
    implementation = "flowmetal"
    implementation_version = __version__
    banner = f"Flowmetal {__version__}: every cell is a durable step (`%fm log`, `%fm status`)"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        _log_to_kernel_log()
        self.fm = runtime.Runtime(kernel_id=_kernel_id_from_connection_file())
        runtime.install(self.fm)
        self.recorder: CellRecorder | None = None
        self._started_up = False
        self._sql_taken = False  # said once that another extension owns %%sql
        self.idle = IdleRechecks(lambda: self.fm.states, self.log)  # between cells (idle.py)
        self.fm.on_open.append(self._attach_recorder)
        self.fm.on_close.append(self._detach_recorder)
        from .flows.runs import on_ready as resume_flow_runs

        self.fm.flows  # flows defined from here on use this kernel's history
        # pending flow runs resume once the namespace (their code) is restored
        if resume_flow_runs not in self.fm.on_ready:
            self.fm.on_ready.append(resume_flow_runs)
        self.fm.open_in_background()
        from .magics import FlowmetalMagics

        self.shell.register_magics(FlowmetalMagics)

    def _attach_recorder(self, rt: runtime.Runtime) -> None:
        assert rt.store is not None
        self.recorder = CellRecorder(rt.store, self.session, rt.kernel_id)
        rt.states = States(rt.store, self.shell.user_ns, set(self.shell.user_ns_hidden))

    def _detach_recorder(self, rt: runtime.Runtime) -> None:
        if self.recorder is not None:
            self.recorder.close()
        self.recorder, rt.states = None, None

    def start(self) -> None:
        super().start()
        self.io_loop.add_callback(self._start_up_when_open)

    def _start_up_when_open(self) -> None:
        # Poll rather than wait: the loop must keep answering kernel_info
        # while the history opens on its thread.
        if self.fm.ready.is_set():
            self._start_up()
        else:
            self.io_loop.call_later(0.05, self._start_up_when_open)

    def _start_up(self) -> None:
        """Once per kernel, on the main thread, before any cell runs on the
        history: restore after an unclean end, then the start-up hooks
        (flows resume their pending runs there)."""
        if self._started_up:
            return
        self._started_up = True
        self._resume_on_start()
        for hook in self.fm.on_ready:
            try:
                hook(self.fm)
            except Exception as exc:
                self.fm.notices.append(f"flowmetal: start-up step failed: {exc}")
        self.fm.ready_to_serve()

    def _resume_on_start(self) -> None:
        """After an unclean end the namespace comes back by itself (spec:
        "Kernel start and resume"); after a clean one it starts empty."""
        mode = os.environ.get("FM_RESUME", "auto")
        rt = self.fm
        if mode not in ("auto", "always", "never"):
            print(f"flowmetal: FM_RESUME={mode!r} is not auto, always or never; using auto",
                  file=sys.stderr)
            mode = "auto"
        if rt.states is None:
            return
        # A history `fm worker` handed over comes with its flows' code: the
        # worker's namespace, restored here so its runs and schedules go on.
        if mode == "never" or (mode == "auto" and not rt.unclean_end and rt.handed_over is None):
            self._restart_hint()
            return
        try:
            line = navigate.resume(rt)
        except Exception as exc:
            rt.notices.append(f"flowmetal: could not restore the last state: {exc}")
            return
        if line:
            why = ("the previous kernel ended uncleanly" if rt.unclean_end else
                   "handed over by `fm worker`" if rt.handed_over is not None else "FM_RESUME=always")
            # shown on the first cell: at start-up no frontend is listening
            rt.notices.append(f"flowmetal: {line} ({why})")
            self.log.info("flowmetal: %s (%s)", line, why)

    def _restart_hint(self) -> None:
        """After a clean end the namespace starts empty (that is why users
        restart); say once that HEAD's state is recorded and how to get it
        back, so an empty namespace never looks like lost work."""
        rt = self.fm
        rec = rt.store.step(rt.head) if rt.head is not None and rt.store is not None else None
        if rec is None or rec.state is None or not rec.state["names"]:
            return
        self._last_names, self._last_step = set(rec.state["names"]), rt.head
        rt.notices.append(f"flowmetal: the namespace starts empty; the state after step {rt.head} "
                          f"({len(self._last_names)} names, branch {rt.branch}) is recorded: "
                          "`%fm resume` brings it back")

    def _name_error_hint(self, reply: dict[str, Any]) -> None:
        """A NameError for a name the last recorded state had, before any
        resume: point at `%fm resume` instead of leaving the user to guess."""
        names = getattr(self, "_last_names", None)
        if not names or reply.get("status") != "error" or reply.get("ename") != "NameError":
            return
        m = re.search(r"name '([^']+)' is not defined", reply.get("evalue", ""))
        if m and m.group(1) in names and m.group(1) not in self.shell.user_ns:
            print(f"flowmetal: `{m.group(1)}` was in the state after step {self._last_step}; "
                  "`%fm resume` restores that state", file=sys.stderr)

    def _capture(self, code: str):
        tl = self.fm.states
        if tl is None:
            return None, None, None
        try:
            return tl.capture(code)
        except Exception as exc:  # a state we cannot store must not fail the cell
            tl.live = None  # the next capture checks everything
            print(f"flowmetal: state after this cell not recorded: {exc}", file=sys.stderr)
            return None, None, None

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, *, cell_meta=None, cell_id=None):
        # store_history=False is not "internal": nbval sends every cell that
        # way. Only silent requests are a frontend's own business.
        rt = self.fm
        self.idle.stop()
        cell_id = cell_id or (cell_meta or {}).get("cellId")
        if not rt.bound:
            # the history is chosen by what the first requests tell (identity.py)
            if not silent:
                rt.bind(cell_id)
            elif (nb := identity.vscode_notebook(code)) is not None:
                rt.learn_notebook(nb)
            if not rt.bound:  # a frontend's own silent request before any cell
                return await super().do_execute(code, silent, store_history, user_expressions,
                                                allow_stdin, cell_meta=cell_meta, cell_id=cell_id)
        cell_sql, line_sql = self._sql_owners()
        record = not silent and not is_history_query(code, cell_sql is None, line_sql is None)
        rt.wait()
        self._start_up()
        _print_notices(rt.take_notices())
        recorder = self.recorder if record else None
        started = None
        if recorder is not None:
            parent_msg = self.get_parent()
            started = recorder.begin(
                code=code, branch=rt.branch, parent=rt.head,
                cell_id=cell_id,
                execution_count=self.shell.execution_count,
                msg_id=(parent_msg.get("header") or {}).get("msg_id"),
            )
        # Stage 2: run the cell exactly as the standard kernel does.
        reply = await super().do_execute(
            code, silent, store_history, user_expressions, allow_stdin,
            cell_meta=cell_meta, cell_id=cell_id,
        )
        if not silent:
            self._name_error_hint(reply)
        if recorder is not None:
            # Stage 3: the outputs the frontend will see are flushed, then the
            # record is committed; only then does ipykernel send the reply.
            if (started.parent, started.branch) != (rt.head, rt.branch):
                # the cell moved HEAD itself (fm.rewind(3) in code): its state
                # grew from where HEAD went, not from where it was
                started.parent, started.branch = rt.head, rt.branch
            state, entries, cap = self._capture(code)
            _flush_pending(sys.stdout, sys.stderr)
            try:
                rec = recorder.finish(reply, state, entries)
                rt.head = rec.step
                if cap is not None:
                    rt.states.committed(entries, cap, rec.step)
            except Exception as exc:  # a broken history must not break the notebook
                print(f"flowmetal: could not record this cell: {exc}", file=sys.stderr)
            self.idle.start()
        if not silent:
            self._say_who_owns_sql()
        return reply

    def _sql_owners(self) -> tuple[str | None, str | None]:
        """Who handles ``%%sql`` and ``%sql`` now: None while it is us."""
        from .magics import FlowmetalMagics

        def owner(kind: str) -> str | None:
            fn = self.shell.magics_manager.magics[kind].get("sql")
            if fn is None or isinstance(getattr(fn, "__self__", None), FlowmetalMagics):
                return None
            return (getattr(fn, "__module__", None) or type(fn.__self__).__module__).split(".")[0]

        return owner("cell"), owner("line")

    def _say_who_owns_sql(self) -> None:
        """Once, when another extension (jupysql) takes ``%%sql`` over."""
        if self._sql_taken:
            return
        other = self._sql_owners()[0]
        if other is not None:
            self._sql_taken = True
            print(f"flowmetal: %%sql now belongs to {other} (`%load_ext sql`); its cells are "
                  "recorded steps; the history's SQL stays reachable as %%fmsql and %fm sql")

    def do_shutdown(self, restart):
        self.fm.flows.close()
        if self.recorder is not None:
            self.recorder.close()
        self.fm.close(clean=True, restart=restart)
        return super().do_shutdown(restart)
