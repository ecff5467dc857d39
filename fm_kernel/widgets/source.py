"""The time-travel views' one door to the history: the store, the States
and `api.History` of one runtime, and the navigate calls that move HEAD.
Nothing in the views writes SQL or touches the live namespace except
through `rewind` and `fork` here, which call `navigate` exactly as the
magics do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import api, errors, runtime
from ..record import trust
from ..state import navigate

__all__ = ["Source", "StepRow"]


@dataclass
class StepRow:
    step: int
    branch: str
    parent: int | None
    status: str
    duration_ms: float | None
    code: str


class Source:
    """Store, States and navigate calls for one runtime (the running
    kernel's by default)."""

    def __init__(self, rt: runtime.Runtime | None = None):
        self.rt = rt if rt is not None else runtime.current()
        self._history: api.History | None = None

    @property
    def store(self):
        return self.rt.require_store()

    @property
    def trusted(self) -> bool:
        """Whether stored outputs may be shown as recorded (record/trust.py)."""
        return trust.gate(self.store).trusted

    @property
    def states(self):
        return self.rt.require_states()

    @property
    def head(self) -> int | None:
        return self.rt.head

    @property
    def branch(self) -> str:
        return self.rt.branch

    def steps(self, branch: str | None = None) -> list[StepRow]:
        res = self.store.steps(branch=branch)
        cols = {c: i for i, c in enumerate(res.columns)}
        return [StepRow(r[cols["step"]], r[cols["branch"]], r[cols["parent"]], r[cols["status"]],
                        r[cols["duration_ms"]], r[cols["code"]]) for r in res.rows]

    def record(self, step: int):
        rec = self.store.step(step)
        if rec is None:
            raise errors.NoSuchStep(step)
        return rec

    def exists(self, step: int) -> bool:
        try:
            return self.store.step(step) is not None
        except errors.FlowmetalError:
            return False

    def last_step(self) -> int:
        return self.store.last_step

    def manifest(self, step: int):
        return self.states.manifest(step)

    def heads(self) -> dict[str, int | None]:
        return self.store.branch_heads()

    def history(self) -> api.History:
        if self._history is None:
            self._history = api.History(self.store, self.rt.frame_path, self.states)
        return self._history

    def state(self, step: int) -> api.PastState:
        return self.history().state(step)

    def rewind(self, step: int, progress: navigate.Progress | None = None) -> str:
        return navigate.rewind(self.rt, step, progress)

    def fork(self, name: str, step: int, progress: navigate.Progress | None = None) -> str:
        return navigate.fork(self.rt, name, step, progress)

    def restore_size(self, step: int) -> tuple[int, int | None]:
        """How many names a move to ``step`` restores and their stored size
        (None: not known), from the manifests alone: nothing is loaded."""
        target, live = self.manifest(step), self.states.live or {}
        names = [e for n, e in target.items()
                 if n not in live or (live[n].ref, live[n].fp) != (e.ref, e.fp)]
        sizes = [e.size_bytes for e in names]
        return len(names), (sum(sizes) if sizes and all(s is not None for s in sizes) else None)

    def version(self) -> tuple[Any, ...]:
        """Changes whenever a cell is recorded or HEAD moves."""
        return (self.store.last_step, self.rt.head, self.rt.branch)
