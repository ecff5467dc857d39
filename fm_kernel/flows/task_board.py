"""The task board: every external task of one history (tasks.py) in memory,
built from the history's task events and changed only together with a new
one, so the board and the journal never disagree.

Claims and completions are served from here alone, never from DuckDB (a
read would flush the flow log per request): a claim takes the head of its
queue's index of claimable tasks, an expiry pops the heap of lease ends.
Both cost O(1)/O(log n) per task, whatever the number of open tasks.

Why the board has its own timer: a run waiting for its task holds no
thread (it parks, parking.py), so nothing would otherwise notice a lease
running out while nobody claims. The board keeps one entry on the
registry's timer heap, for its earliest lease end; leases are mostly
handed out in the order they end, so a claim rarely adds one.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import LeaseLost, NoSuchTask
from .context import registry
from .journal import Journal

log = logging.getLogger(__name__)

DEFAULT_LEASE = 300.0  # seconds a claim holds without heartbeat or timeout
KINDS = ("task_queued", "task_claimed", "task_heartbeat", "task_completed", "task_failed",
         "task_expired", "task_cancelled")
FINISHED = ("completed", "failed", "cancelled")
MAX_TASKS = 1000  # most tasks one claim may take


@dataclass
class Task:
    task_id: str
    run_id: str
    position: int
    queue: str
    payload: Any
    timeout: float | None
    heartbeat: float | None
    retries: int
    status: str = "queued"
    attempt: int = 0
    worker: str | None = None
    lease: str | None = None
    lease_until: float | None = None
    claimed_at: float | None = None
    result: Any = None
    error: Any = None
    done_lease: str | None = None  # the lease that completed it (a repeated completion is no error)

    def lease_end(self, now: float) -> float:
        """When a lease renewed at ``now`` runs out: a heartbeat interval (or
        the timeout, or DEFAULT_LEASE) on, never past claim + timeout."""
        end = now + (self.heartbeat or self.timeout or DEFAULT_LEASE)
        if self.timeout is not None and self.claimed_at is not None:
            end = min(end, self.claimed_at + self.timeout)
        return end

    def offer(self) -> dict[str, Any]:
        """What a claim answers (payload last: the curl worker cuts it off the end)."""
        return {"task_id": self.task_id, "lease": self.lease, "attempt": self.attempt,
                "run_id": self.run_id, "queue": self.queue, "lease_until": self.lease_until,
                "heartbeat": self.heartbeat, "payload": self.payload}


def _apply(tasks: dict[str, Task], kind: str, run_id: str | None, p: dict[str, Any]) -> Task | None:
    """One event onto the board (live, and when loading the history)."""
    if kind == "task_queued":
        return tasks.setdefault(p["task_id"], Task(
            p["task_id"], run_id or "", p["position"], p["queue"], p.get("payload"),
            p.get("timeout"), p.get("heartbeat"), p.get("retries", 0)))
    t = tasks.get(p["task_id"])
    if t is None:
        return None
    t.status = p["status"]
    for field in ("attempt", "worker", "lease", "lease_until", "claimed_at", "result", "error"):
        if field in p:
            setattr(t, field, p[field])
    if kind == "task_completed":
        t.done_lease = p.get("lease")
    if t.status != "claimed":
        t.lease = None
    return t


class TaskBoard:
    """The tasks of one history: in memory, rebuilt from its events."""

    def __init__(self, journal: Journal, timers: Any = None):
        self.journal, self.store, self.timers = journal, journal.store, timers
        self.lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        # claimable tasks per queue, oldest first (an OrderedDict: taking
        # the head is O(1), where a dict's first key slows as heads go)
        self.queued: dict[str, collections.OrderedDict[str, Task]] = {}
        self.leases: list[tuple[float, str]] = []  # (lease_until, task_id); stale ones skipped
        self.claimed: set[str] = set()  # the tasks whose leases the heap is for
        self._timer_at: float | None = None  # the board's entry on the timer heap
        self._timer_gen = 0  # which entry is the live one (an earlier lease end replaces it)
        # one-shot calls per queue, made when a task there becomes claimable:
        # a waiting claim answers at once instead of at its next look
        self.waiters: dict[str, set[Callable[[], None]]] = {}
        journal.flush()
        res = self.store.query("SELECT kind, run_id, payload FROM fm_events"
                               " WHERE list_contains(?, kind) ORDER BY seq", [list(KINDS)])
        for kind, run_id, payload in res.rows:
            _apply(self.tasks, kind, run_id, json.loads(payload) if isinstance(payload, str) else payload)
        with self.lock:
            for t in self.tasks.values():
                self._index(t)

    def _index(self, t: Task) -> None:
        """Keep the queue index and the lease heap in step with ``t``."""
        if t.status == "queued":
            self.queued.setdefault(t.queue, collections.OrderedDict())[t.task_id] = t
            return
        q = self.queued.get(t.queue)
        if q is not None and q.pop(t.task_id, None) is not None and not q:
            del self.queued[t.queue]
        if t.status != "claimed" or t.lease_until is None:
            self.claimed.discard(t.task_id)
            return
        self.claimed.add(t.task_id)
        heapq.heappush(self.leases, (t.lease_until, t.task_id))
        if len(self.leases) > 1024 + 4 * len(self.claimed):
            # entries of finished tasks and renewed leases wait for their
            # old end before they are popped: drop them all at once (a
            # 300 s lease at 1,000 tasks/s would leave 300,000 behind)
            self.leases = [(self.tasks[i].lease_until, i) for i in self.claimed]  # type: ignore[misc]
            heapq.heapify(self.leases)
        self._arm()

    def _arm(self) -> None:
        """Have the timer call us at the earliest lease end, unless it will already."""
        if self.timers is None or not self.leases:
            return
        first = self.leases[0][0]
        if self._timer_at is None or first < self._timer_at:
            self._timer_at = first
            self._timer_gen += 1  # strictly past the end: expired then
            self.timers.at(first + 0.001, _Alarm(self, self._timer_gen), "task lease ends")

    def timer_fired(self, gen: int) -> None:
        """The timer heap's call (through _Alarm): expire what is due, re-arm."""
        if getattr(registry(), "_task_board", None) is not self:
            return  # a board of a history closed since
        with self.lock:
            if gen != self._timer_gen:
                return  # replaced by an earlier entry, which re-armed when it fired
            self._timer_at = None
            self._expire_due(time.time())
            self._arm()

    def _record(self, kind: str, t: Task, also: list | None = None, **fields: Any) -> None:
        self._record_all([(kind, t, fields)], also)

    def _record_all(self, changes: list[tuple[str, Task, dict[str, Any]]],
                    also: list | None = None) -> None:
        """Make the events durable first (one write for all, with the journal
        records ``also``), then change the board (under self.lock), wake
        claims waiting for a task and runs waiting for their task's end."""
        events = [(kind, t.run_id, {"task_id": t.task_id, **fields}) for kind, t, fields in changes]
        self.journal.events(events, also)
        for kind, run_id, payload in events:
            t = _apply(self.tasks, kind, run_id, payload)
            if t is None:
                continue
            self._index(t)
            if t.status == "queued":
                for wake in self.waiters.pop(t.queue, ()):
                    wake()
            elif t.status in FINISHED:  # what its waiting run looks for; the rest it need not see
                run = registry().runs.get(t.run_id)
                if run is not None:
                    run.wake()

    def enqueue(self, task_id: str, run_id: str, position: int, queue: str, payload: Any,
                timeout: float | None, heartbeat: float | None, retries: int,
                also: list | None = None) -> None:
        """Queue a task (and write the journal records ``also`` with its event:
        the run's own records of the wait, one write for all)."""
        with self.lock:
            if task_id in self.tasks:  # queued before a kill: the same task
                if also:
                    self.journal.append_many(also)
                return
            t = Task(task_id, run_id, position, queue, payload, timeout, heartbeat, retries)
            self._record("task_queued", t, also, status="queued", position=position, queue=queue,
                         payload=payload, timeout=timeout, heartbeat=heartbeat, retries=retries)

    def get(self, task_id: str) -> Task:
        with self.lock:
            t = self.tasks.get(task_id)
            if t is None:
                raise NoSuchTask(task_id)
            copy = Task.__new__(Task)  # (not through __init__: 17 arguments, twice a task)
            copy.__dict__.update(t.__dict__)
            return copy

    def claim(self, queue: str, worker: str) -> dict[str, Any] | None:
        """The oldest task of ``queue`` with a new lease, or None."""
        got = self.claim_many(queue, worker, 1)
        return got[0] if got else None

    def claim_many(self, queue: str, worker: str, most: int,
                   wake: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Up to ``most`` tasks of ``queue``, oldest first, each with a new
        lease. None there: ``wake`` (if given) is called once when one is
        (registered in the same look, so none can slip in between)."""
        now = time.time()
        with self.lock:
            self._expire_due(now)
            q = self.queued.get(queue)
            claims = []
            for t in itertools.islice(q.values(), most) if q else ():
                t.claimed_at = now  # lease_end reads it
                claims.append(("task_claimed", t, {
                    "status": "claimed", "attempt": t.attempt + 1, "worker": worker,
                    "lease": secrets.token_urlsafe(18), "claimed_at": now,
                    "lease_until": t.lease_end(now)}))
            if claims:
                self._record_all(claims)
            elif wake is not None:
                self.waiters.setdefault(queue, set()).add(wake)
            return [t.offer() for _, t, _ in claims]

    def unwait(self, queue: str, wake: Callable[[], None]) -> None:
        """A claim that stopped waiting: forget its ``wake``."""
        with self.lock:
            waiting = self.waiters.get(queue)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
                    del self.waiters[queue]

    def _current(self, task_id: str, lease: Any, now: float) -> Task:
        t = self.tasks.get(task_id)
        if t is None:
            raise NoSuchTask(task_id)
        self._expire_one(t, now)
        if t.status != "claimed" or not isinstance(lease, str) or lease != t.lease:
            why = f"it is {t.status}" if t.status != "claimed" else \
                f"it was offered again and is now attempt {t.attempt}"
            raise LeaseLost(f"task {task_id}: this lease is no longer the task's ({why}); "
                            "drop the work, and claim again")
        return t

    def heartbeat(self, task_id: str, lease: Any) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            t = self._current(task_id, lease, now)
            self._record("task_heartbeat", t, status="claimed", lease_until=t.lease_end(now))
            return {"task_id": task_id, "status": t.status, "lease_until": t.lease_until}

    def complete(self, task_id: str, lease: Any, result: Any) -> bool:
        """True once recorded; False for a repeat of the completion that was."""
        got = self.complete_many([(task_id, lease, result)])[0]
        if isinstance(got, Exception):
            raise got
        return got

    def complete_many(self, items: list[tuple[str, Any, Any]]) -> list[bool | Exception]:
        """Complete several tasks, each (task_id, lease, result), with one
        write: per item True (recorded), False (a repeat of the completion
        that was) or the NoSuchTask/LeaseLost it gets alone."""
        out: list[bool | Exception] = []
        done: dict[str, Any] = {}  # task id -> lease, completed earlier in this batch
        changes = []
        with self.lock:
            now = time.time()
            for task_id, lease, result in items:
                t = self.tasks.get(task_id)
                if t is not None and t.status == "completed" and lease == t.done_lease or \
                        task_id in done and done[task_id] == lease:
                    out.append(False)
                    continue
                try:
                    if task_id in done:
                        raise LeaseLost(f"task {task_id}: completed earlier in this batch with "
                                        "another lease; drop the work")
                    t = self._current(task_id, lease, now)
                except (LeaseLost, NoSuchTask) as exc:
                    out.append(exc)
                    continue
                done[task_id] = lease
                changes.append(("task_completed", t, {"status": "completed", "lease": lease,
                                                      "result": result}))
                out.append(True)
            if changes:
                self._record_all(changes)
        return out

    def fail(self, task_id: str, lease: Any, error: Any, retryable: bool) -> str:
        """The status after the failure: queued (offered again) or failed."""
        with self.lock:
            t = self._current(task_id, lease, time.time())
            again = bool(retryable) and t.attempt <= t.retries
            self._record("task_failed", t, status="queued" if again else "failed",
                         error={"message": error, "attempt": t.attempt, "retryable": bool(retryable)})
            return t.status

    def cancel(self, task_id: str) -> None:
        with self.lock:
            t = self.tasks.get(task_id)
            if t is not None and t.status not in FINISHED:
                self._record("task_cancelled", t, status="cancelled")

    def expire_due(self, task_id: str) -> None:
        """Offer ``task_id`` again (or fail it) if its lease ran out (what a
        run that waits blocking checks, having no parking)."""
        with self.lock:
            t = self.tasks.get(task_id)
            if t is not None:
                self._expire_one(t, time.time())

    def _expire_due(self, now: float) -> None:
        """Every lease that ran out, from the heap: O(log n) each."""
        while self.leases and self.leases[0][0] < now:
            _, task_id = heapq.heappop(self.leases)
            self._expire_one(self.tasks[task_id], now)  # or a stale entry: nothing

    def _expire_one(self, t: Task, now: float) -> None:
        if t.status == "claimed" and t.lease_until is not None and t.lease_until < now:
            again = t.attempt <= t.retries
            msg = (f"the lease of attempt {t.attempt} (worker {t.worker!r}) expired: no "
                   f"completion{' or heartbeat' if t.heartbeat else ''} in time")
            self._record("task_expired", t, status="queued" if again else "failed",
                         error={"message": msg, "attempt": t.attempt, "retryable": True})


class _Alarm:
    """The board's entry on the registry's timer heap (parking.Timers). The
    heap calls a parked run's ``timer_fired``; a change under way makes it
    call plain callables instead: this is both, so either heap reaches the
    board with the generation it was armed with."""

    def __init__(self, board: TaskBoard, gen: int):
        self.board, self.gen = board, gen

    def __call__(self) -> None:
        self.board.timer_fired(self.gen)

    def timer_fired(self, _gen: Any = None) -> None:
        self.board.timer_fired(self.gen)


_board_lock = threading.Lock()


def board() -> TaskBoard:
    """The TaskBoard of this process's history (made on first use)."""
    reg = registry()
    journal = reg.journal
    with _board_lock:
        b = getattr(reg, "_task_board", None)
        if b is None or b.journal is not journal:
            b = TaskBoard(journal, reg.parking.timers)
            reg._task_board = b  # type: ignore[attr-defined]
        return b


def board_ready() -> TaskBoard | None:
    """The board if it is made already (no DuckDB read): what the endpoint's
    loop may call without blocking."""
    reg = registry()
    b = getattr(reg, "_task_board", None)
    return b if b is not None and b.journal is reg._journal else None
