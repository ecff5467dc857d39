"""The per-kernel state that magics and the Python API share: which history
is open, where HEAD is, and the one-line notices owed to the user.

The kernel opens the history on a background thread so that a kernel starts
as fast as a plain one; everything that needs the store waits on `ready`.
When the history cannot be chosen at start (record/identity.py: the notebook
is not known yet, or may have been renamed) it is chosen and opened by the
first execute request, before that cell's step is recorded (`bind`).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from .record import changes, identity, location
from .record.recorder import InflightMarker, recover_interrupted
from .record.store import Store

_current: "Runtime | None" = None


def current() -> "Runtime":
    """The runtime of the kernel this code runs in."""
    if _current is None:
        from .errors import FlowmetalError

        raise FlowmetalError(
            "no flowmetal kernel is running here; start the 'Flowmetal (Python 3)' kernel "
            "or use `fm sql --history PATH` from a shell"
        )
    return _current


def endpoint_routes(worker: bool = False) -> tuple[tuple[str, type], ...]:
    """The routes a kernel's endpoint serves beside its own (/sql, /openapi.json):
    flows, tasks, events; `fm worker`'s also the release of its history to a
    kernel. tests/unit/test_openapi.py holds the OpenAPI document to them."""
    from .endpoint.release import ROUTES as RELEASE_ROUTES
    from .flows.event_routes import ROUTES as EVENT_ROUTES
    from .flows.routes import ROUTES as FLOW_ROUTES
    from .flows.task_routes import ROUTES as TASK_ROUTES

    return FLOW_ROUTES + TASK_ROUTES + EVENT_ROUTES + (RELEASE_ROUTES if worker else ())


class Runtime:
    def __init__(self, kernel_id: str | None = None, history: Path | None = None):
        self.kernel_id = kernel_id or uuid.uuid4().hex
        self.plan = identity.plan() if history is None else \
            identity.Plan(history, None, Path.cwd(), explicit=True)
        # None until bound: then the history this kernel opens (or opened)
        self.requested_path: Path | None = self.plan.path
        self._bind_lock = threading.Lock()
        self._bound_event: tuple[str, dict] | None = None  # recorded once open
        self.store: Store | None = None
        self.branch = "main"
        # HEAD: the step new cells grow from. The namespace holds its state,
        # except after a clean restart, until `%fm resume` (docs/time-travel.md)
        self._head: int | None = None
        self.notices: list[str] = []
        self.closing = False  # close() has begun
        self.interrupted: list[int] = []
        self.ready = threading.Event()
        self.open_error: BaseException | None = None
        self.on_open: list[Callable[[Runtime], Any]] = []  # on the opening thread
        self.on_ready: list[Callable[[Runtime], Any]] = []  # on the main thread, after resume
        self.on_close: list[Callable[[Runtime], Any]] = []  # before reopen() lets the store go
        self.endpoint: Any = None
        self.states: Any = None  # timeline.States, made by the kernel once open
        self.unclean_end = False  # the previous kernel on this history died
        self.started_seq: int | None = None  # where this kernel's part of the history begins
        self._flows: Any = None  # flows.FlowRegistry, made on first use (see `flows`)
        self.role = "kernel"  # or "worker": `fm worker`, which hands its history to kernels
        # record/handover.HandedOver: this kernel took its history over from `fm worker`
        self.handed_over: Any = None
        self.kept_token: str | None = None  # the endpoint token to keep (a hand-over)

    @property
    def head(self) -> int | None:
        return self._head

    @head.setter
    def head(self, step: int | None) -> None:
        # every move (a recorded cell, rewind, fork, checkout, adopt) passes
        # here: open views hear of it (record/changes.py) without polling
        self._head = step
        changes.notify("head")

    def open_in_background(self) -> None:
        if self.requested_path is None:
            return  # chosen by the first cell (bind)
        threading.Thread(target=self._open, name="fm-open-history", daemon=True).start()

    @property
    def bound(self) -> bool:
        return self.requested_path is not None

    def learn_notebook(self, notebook: Path) -> None:
        """A frontend named the notebook (VS Code's ``__vsc_ipynb_file__``):
        open its history now, unless it may be a renamed one (then the
        first cell's id decides)."""
        with self._bind_lock:
            if self.bound:
                return
            self.plan = identity.for_notebook(notebook, self.plan.cwd)
            if self.plan.path is None:
                return
            self.requested_path = self.plan.path
        self._open()

    def bind(self, cell_id: str | None = None) -> None:
        """Choose the history from what the first request tells, and open it
        on this thread. Does nothing once bound."""
        with self._bind_lock:
            if self.bound:
                return
            try:
                binding = identity.bind(self.plan, self.kernel_id, cell_id)
            except Exception as exc:  # never lose the cell over a lookup
                binding = identity.Binding(location.beside(self.plan.notebook)
                                           if self.plan.notebook else
                                           location.session_path(self.plan.cwd, self.kernel_id))
                self.notices.append(f"flowmetal: could not look for this notebook's history: {exc}")
            if binding.notice:
                self.notices.append(binding.notice)
            self._bound_event = binding.event
            self.requested_path = binding.path
        self._open()

    def _open(self) -> None:
        try:
            store, notice = location.open_history(self.requested_path, self.kernel_id,
                                                  take_over=self.role == "kernel")
            if notice:
                self.notices.append(notice)
            self.handed_over = store.handed_over
            if self.handed_over is not None:
                self.kept_token = self.handed_over.token
            last = store.last_event(["kernel_started", "kernel_stopped"])
            self.unclean_end = last is not None and last["kind"] == "kernel_started"
            self.interrupted = recover_interrupted(store, InflightMarker(store.path))
            self.unclean_end = self.unclean_end or bool(self.interrupted)
            # HEAD comes from the record, not from the last step: a rewind,
            # fork or checkout may have moved it since (docs/time-travel.md)
            self.branch, self.head = store.head() or ("main", None)
            from .record.bundle import ensure_origin

            ensure_origin(store)
            self.started_seq = store.append_event("kernel_started", payload={
                "kernel_id": self.kernel_id, "pid": os.getpid(),
                # `fm run` names the run a headless session belongs to (resume)
                "run_key": os.environ.get("FM_RUN_KEY")})
            if self._bound_event is not None:
                store.append_event(self._bound_event[0], payload=self._bound_event[1])
                self._bound_event = None
            if self.plan.notebook is not None and not self.plan.explicit:
                store.set_meta("notebook", self.plan.notebook.name)
            self.store = store
            self._start_endpoint(store)
            for hook in self.on_open:
                hook(self)
        except BaseException as exc:  # reported on the first cell, never fatal
            self.open_error = exc
            self.notices.append(f"flowmetal: history unavailable, cells are not recorded: {exc}")
        finally:
            self.ready.set()

    def reopen(self, replace: Callable[[Path], Any]) -> None:
        """Close the history, let ``replace(path)`` put another in its place,
        and open that one as this kernel's (``%fm adopt``)."""
        store = self.require_store()
        flows = self._flows
        if flows is not None and flows.runs:
            from .errors import UsageError

            raise UsageError("this kernel has flow runs on its history already; "
                             "adopt another one in a fresh kernel (restart, then `%fm adopt`)")
        if flows is not None:
            # the journal holds the old store; the next flow opens one on the new
            with flows.lock:
                journal, flows._journal = flows._journal, None
            if journal is not None:
                journal.close()
        path = store.path
        for hook in self.on_close:
            hook(self)
        self.close(clean=True)
        self.ready.clear()
        try:
            replace(path)
        finally:
            self.open_error = None
            self._open()
        if self.open_error is not None:
            raise self.open_error

    def _start_endpoint(self, store: Store) -> None:
        if str(store.path) == ":memory:":
            return
        from .endpoint import PORT_META, Endpoint, choose_port

        try:
            kept = store.meta(PORT_META)
            port, notice = choose_port(kept)
            if notice:
                self.notices.append(notice)
            self.endpoint = Endpoint(store.path, lambda: self.require_store(), self.kernel_id,
                                     frames=self.frame_path, port=port, role=self.role,
                                     token=self.kept_token,
                                     routes=endpoint_routes(worker=self.role == "worker"))
            # Taking over from another process: 503 until the flows are back
            # (ready_to_serve), or an event would find no flow to start.
            self.endpoint.draining = self.role == "worker" or self.handed_over is not None
            self.endpoint.start()
        except Exception as exc:  # cells must run even if no port can be had
            self.endpoint = None
            self.notices.append(f"flowmetal: HTTP endpoint not started: {exc}")
            return
        if self.endpoint.fallback:
            self.notices.append(
                f"flowmetal: port {port}, kept for this history, is taken "
                f"({self.endpoint.fallback}); serving on {self.endpoint.port} for now, so URLs "
                "handed out before do not reach this kernel")
        elif self.endpoint.port and kept != str(self.endpoint.port):
            store.set_meta(PORT_META, str(self.endpoint.port))  # kept from now on

    def ready_to_serve(self) -> None:
        """The flows' code is restored and their runs resumed: serve requests."""
        if self.endpoint is not None:
            self.endpoint.draining = False

    @property
    def flows(self) -> Any:
        """This runtime's FlowRegistry, installed as the process's own: flows
        reach the history and the endpoint through it, never through here."""
        if self._flows is None:
            from .flows.context import FlowRegistry, install

            self._flows = FlowRegistry(
                store=self.require_store,
                base_url=lambda: self.endpoint.public_url if self.endpoint is not None else None)
            install(self._flows)
        return self._flows

    def frame_path(self, name: str, step: int) -> Path:
        """The Parquet file of DataFrame ``name`` after ``step`` (time travel)."""
        return self.require_states().frame_path(name, step)

    def require_states(self):
        self.require_store()
        if self.states is None:
            from .errors import HistoryError

            raise HistoryError("namespace states are not recorded in this kernel")
        return self.states

    def wait(self, timeout: float | None = 60.0) -> Store | None:
        if not self.bound:
            self.bind()  # asked for the store before any cell: nothing more will be known
        self.ready.wait(timeout)
        return self.store

    def require_store(self) -> Store:
        store = self.wait()
        if store is None:
            from .errors import HistoryError

            raise HistoryError(str(self.open_error) if self.open_error else "history not open yet")
        return store

    def take_notices(self) -> list[str]:
        notes, self.notices = self.notices, []
        return notes

    def close(self, clean: bool, restart: bool = False) -> None:
        # Shutdown runs on ipykernel's control thread while the main loop may
        # still be refreshing a widget: views check this to stay quiet.
        self.closing = True
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        store = self.store
        if store is None:
            return
        try:
            store.append_event(
                "kernel_stopped", payload={"kernel_id": self.kernel_id, "clean": clean, "restart": restart}
            )
        finally:
            store.close()
            self.store = None


def install(rt: Runtime) -> None:
    global _current
    _current = rt
