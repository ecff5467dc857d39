"""Where flow code finds its state: the process's FlowRegistry (flows,
live runs, the journal, the scheduler) and the context of the run and step
executing on this thread.

The registry is reached through ``registry()`` only, DBOS-style: the
runtime that owns a history installs its own (``Runtime.flows``); a script
with no kernel gets a standalone one on first use and gives it a store with
``configure``. Flows never import the runtime.

A run executes its flow function with a RunContext that hands out positions
1, 2, 3... to durable operations in call order. Each operation first looks
at its position in the run's journal: a recorded result is returned without
running anything (replay); otherwise it runs and its result is journaled
before the flow continues.
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import FlowError, NondeterminismError, StepError
from .deadlines import Deadlines
from .journal import Journal
from .parking import Park, Parking
from .schedule import Scheduler

if TYPE_CHECKING:
    from ..record.store import Store


class FlowRegistry:
    """Everything flows keep per process: the defined flows by name, the
    live Run handles, pending runs waiting for their flow's definition,
    callbacks made here, the journal, the endpoint's URL, the scheduler and
    the watch on run deadlines.

    ``store`` and ``base_url`` may be callables: the runtime passes its own
    accessors, so nothing is opened before the first flow needs it."""

    def __init__(self, store: "Store | Callable[[], Store] | None" = None,
                 base_url: str | Callable[[], str | None] | None = None):
        self.flows: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}
        self.orphans: dict[str, set[str]] = {}
        self.callbacks: dict[str, str] = {}  # callback id -> run id, for those made here
        self.event_secrets: dict[str, str | None] = {}  # fm.event_source (events.py)
        self.sources: dict[str, Any] = {}  # flow name -> its running fm.files/fm.poll (sources.py)
        self.queues: dict[str, Any] = {}  # queue name -> the fm.Queue dispatching it (queues.py)
        self.maps: dict[tuple[str, int], Any] = {}  # (run, position) -> its fm.map's MapJob (fanout.py)
        self.lock = threading.RLock()
        self.ready = False  # pending runs resumed: later definitions resume theirs at once
        self._store = store
        self._base_url = base_url
        self._journal: Journal | None = None
        self.scheduler = Scheduler(lambda: self.journal)
        self.parking = Parking()  # workers and the timer heap of runs that wait (parking.py)
        self.deadlines = Deadlines(self.parking.timers)  # run timeouts, on that heap

    @property
    def journal(self) -> Journal:
        with self.lock:
            if self._journal is None:
                store = self._store() if callable(self._store) else self._store
                if store is None:
                    raise FlowError("flows have no history here: run them in a flowmetal kernel, "
                                    "or call fm_kernel.flows.configure(store) in a script")
                self._journal = Journal(store)
            return self._journal

    def configure(self, store: "Store", base_url: str | None = None) -> Journal:
        with self.lock:
            self._store, self._base_url, self._journal = store, base_url, Journal(store)
            return self._journal

    def base_url(self) -> str:
        url = self._base_url() if callable(self._base_url) else self._base_url
        if not url:
            raise FlowError("this kernel has no HTTP endpoint, so callbacks cannot be delivered; "
                            "see the kernel's start-up notice for why")
        return url

    def forget(self, name: str) -> None:
        """Drop a defined flow and its schedule (tests, and redefining cells)."""
        with self.lock:
            self.flows.pop(name, None)
        self.scheduler.remove(name)
        self.set_source(name, None)

    def set_source(self, name: str, source: Any) -> None:
        """Make ``source`` (or None) the running event source of flow ``name``,
        stopping the one it replaces (a re-run cell defines the flow anew)."""
        with self.lock:
            old = self.sources.pop(name, None)
            if source is not None:
                self.sources[name] = source
        if old is not None and old is not source:
            old.stop()

    def flush(self) -> None:
        """Move journal records still in the log into the history (before an export)."""
        if self._journal is not None:
            self._journal.flush()

    def close_journal(self) -> None:
        """Checkpoint and close the journal, keeping the defined flows: the
        next use opens one on whatever history the store source gives then
        (a runtime that swaps its history)."""
        with self.lock:
            j, self._journal = self._journal, None
        if j is not None:
            j.close()

    def close(self) -> None:
        """A clean end: the log's records into the history, the log closed."""
        self.scheduler.stop()
        self.parking.stop()
        with self.lock:
            sources, self.sources = list(self.sources.values()), {}
        for source in sources:
            source.stop()
        with self.lock:
            queues, self.queues = list(self.queues.values()), {}
        for queue in queues:  # nothing starts once the journal is closed
            queue.stop()
        self.close_journal()


_registry: FlowRegistry | None = None
_registry_lock = threading.Lock()


def registry() -> FlowRegistry:
    """The FlowRegistry of this process (a standalone one if none was installed)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = FlowRegistry()
        return _registry


def install(reg: FlowRegistry) -> None:
    """Make ``reg`` the process's registry. Flows defined before (at import,
    before the kernel's runtime existed) move into it."""
    global _registry
    with _registry_lock:
        old, _registry = _registry, reg
    if old is not None and old is not reg:
        with reg.lock:
            for name, fl in old.flows.items():
                reg.flows.setdefault(name, fl)
            for name, q in old.queues.items():  # its dispatcher reaches registry(): this one now
                reg.queues.setdefault(name, q)


def configure(store: "Store", base_url: str | None = None) -> Journal:
    """Use ``store`` for flows in this process (the kernel does this by
    itself; scripts and benchmarks call it with a Store they opened)."""
    return registry().configure(store, base_url)


# -- the run and step executing on this thread -------------------------------------------


@dataclass
class StepContext:
    """Where a step body runs: ``key`` is stable across replays and retries,
    so pass it to an external API as an idempotency key."""

    run_id: str
    position: int
    name: str
    attempt: int

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.position}"


class RunContext:
    """The journal positions of one execution of a run; see the module doc."""

    def __init__(self, run: Any, rows: list[dict[str, Any]], is_async: bool):
        self.run, self.is_async = run, is_async
        self.latest: dict[int, dict[str, Any]] = {}
        self.attempts: dict[int, int] = {}
        self.consumed: set[int] = set()
        # The highest seq taken per message topic: recv takes a topic's
        # messages oldest first, so the ones taken are those up to here.
        self.topic_seq: dict[str, int] = {}
        for r in rows:
            self._remember(r)
        self.next = 1
        self.lock = threading.Lock()
        # parking.py: the thread whose body may park (None: it may not), and
        # the Park raised, so a body that swallowed it is still parked.
        self.park_thread: int | None = None
        self.park_async = False  # an async flow's waits park from their helper threads
        self.failure: BaseException | None = None  # replay found other code (check)
        self.parking: Park | None = None

    def _remember(self, r: dict[str, Any]) -> None:
        p = r["position"]
        self.latest[p] = r
        self.attempts[p] = max(self.attempts.get(p, 0), r.get("attempt") or 0)
        detail = r.get("detail") or {}
        if detail.get("event_seq") is not None:
            self.consumed.add(detail["event_seq"])
            if detail.get("message") is not None:
                topic, seq = detail["message"], detail["event_seq"]
                self.topic_seq[topic] = max(seq, self.topic_seq.get(topic, 0))

    def adopt(self, other: "RunContext", positions: range) -> None:
        """Take the records ``other`` (an earlier execution of the run) holds
        at ``positions``: an fm.map job journals there after its run parked,
        and a later park keeps only what this context knows (fanout.py)."""
        if other is self:
            return
        with other.lock:
            rows = [other.latest[q] for q in positions if q in other.latest]
        with self.lock:
            for r in rows:
                self._remember(r)

    def take(self, n: int = 1) -> int:
        if self.parking is not None and not self.is_async:  # a bare except swallowed the Park
            raise self.parking
        with self.lock:
            p, self.next = self.next, self.next + n
        return p

    def check(self, p: int, name: str) -> dict[str, Any] | None:
        rec = self.latest.get(p)
        if rec is not None and rec["name"] != name:
            raise self._failing(NondeterminismError(
                f"run {self.run.id} of flow {self.run.flow_name!r}: position {p} was recorded as "
                f"{rec['name']!r} but the flow now calls {name!r} there; the flow's code changed "
                f"since this run was recorded. {_fixes(p, rec['name'])}"))
        return rec

    def _failing(self, exc: BaseException) -> BaseException:
        # An async branch may park while another fails here: the run then
        # fails at once rather than at its wake-up (Run.execute).
        self.failure = exc
        return exc

    def record(self, p: int, name: str, status: str, attempt: int = 0, started: float | None = None,
               result: str | None = None, error: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        now = time.time()
        row = {"run_id": self.run.id, "position": p, "name": name, "status": status,
               "attempt": attempt, "started_at": started or now, "finished_at": now,
               "duration_ms": (now - started) * 1000 if started else 0.0,
               "result": result, "error": error, "detail": detail}
        registry().journal.append("step", row)
        with self.lock:
            self._remember(row)


def _fixes(p: int, recorded: str) -> str:
    """What to do about a run recorded by other code (NondeterminismError)."""
    if recorded.startswith("fm.patched("):
        return (f"This run took the path of {recorded} there: keep that call (and its branch) "
                "while runs that took it are pending, or start a new run, or "
                f"run.fork(from_step={p}) to re-execute from {p} with the current code")
    return ('To let runs recorded by the old code finish on it, guard the change with '
            '`if fm.patched("some-name"):` (new code) `else:` (the old code), at the place '
            f"where the code differs; or start a new run, or run.fork(from_step={p}) to "
            f"re-execute from {p} with the current code")


CURRENT_RUN: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "fm_flow", default=None)
CURRENT_STEP: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "fm_step", default=None)


def current_run() -> RunContext | None:
    """The RunContext of the flow body running now, or None outside flows."""
    return CURRENT_RUN.get()


def step_context() -> StepContext | None:
    """The StepContext of the step body running now, or None outside steps."""
    return CURRENT_STEP.get()


def replay(rec: dict[str, Any] | None) -> tuple[bool, Any]:
    """(True, value) for a recorded result; raises a recorded final error."""
    if rec is None:
        return False, None
    j = registry().journal
    if rec["status"] == "ok":
        return True, j.decode(rec["result"])
    if rec["status"] == "failed":
        exc, info = j.decode_error(rec["error"])
        raise exc if exc is not None else StepError(
            f"{info.get('type')}: {info.get('message')} (recorded for step {rec['name']!r} "
            f"at position {rec['position']} of run {rec['run_id']})")
    return False, None
