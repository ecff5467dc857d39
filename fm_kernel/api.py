"""The history half of the public Python API (`fm.history()`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .state import navigate
from .record import querying
from . import runtime
from .record.store import Store


class History:
    """Read access to one history: the current kernel's, or a file's."""

    def __init__(self, store: Store, frames: querying.FrameResolver | None = None,
                 timeline: Any = None):
        self._store = store
        self._frames = frames
        self._tl = timeline

    @property
    def path(self) -> Path:
        return self._store.path

    def steps(self, branch: str | None = None):
        """Steps as a DataFrame, oldest first (all branches unless one is named)."""
        return self._store.steps_frame(branch)

    def sql(self, query: str, params: list[Any] | None = None):
        """Run read-only SQL over the history views; returns a DataFrame.

        ``frame('df', 12)`` in the query reads DataFrame ``df`` as it was after
        step 12. DuckDB's ``?`` parameters take values from ``params``."""
        return querying.run(self._store, query, params or [], self._frames).to_pandas()

    def state(self, step: int) -> "PastState":
        """The variables after ``step``, read-only, each loaded when first read.
        Nothing in the live namespace changes."""
        tl = self._timeline()
        return PastState(tl, step, tl.manifest(step))

    def value(self, name: str, step: int) -> Any:
        """The value of ``name`` as it was after ``step`` (a fresh copy)."""
        return self._timeline().value(name, step)

    def _timeline(self):
        if self._tl is None:
            from .state.states import States

            self._tl = States(self._store, {})
        return self._tl

    def __repr__(self) -> str:
        return f"<fm.History {self.path}>"


class PastState(Mapping[str, Any]):
    """Mapping of a past step's variables; values load lazily and are copies."""

    def __init__(self, timeline: Any, step: int, manifest: Any):
        self._tl, self.step, self._m = timeline, step, manifest
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._m:
            raise KeyError(name)
        if name not in self._cache:
            self._tl._require_trust()
            self._cache[name] = self._tl.snap.load_value(self._m[name])
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def summary(self):
        """name, type, size and summary of every variable, as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([(n, e.type, e.size_bytes, e.summary, e.restorable)
                             for n, e in self._m.items()],
                            columns=["name", "type", "size_bytes", "summary", "restorable"])

    def __repr__(self) -> str:
        return f"<state after step {self.step}: {', '.join(sorted(self._m))}>"


def history(path: str | Path | None = None) -> History:
    """The history of this kernel, or of the file at ``path`` (opened read-only)."""
    if path is not None:
        return History(Store.open(Path(path), read_only=True))
    rt = runtime.current()
    return History(rt.require_store(), rt.frame_path, rt.states)


def rewind(step: int) -> str:
    """Make the namespace the state after ``step``; HEAD moves there."""
    return _say(navigate.rewind(runtime.current(), step))


def undo(n: int = 1) -> str:
    """Rewind ``n`` steps back along the current branch."""
    return _say(navigate.undo(runtime.current(), n))


def fork(name: str, from_step: int | None = None) -> str:
    """Create branch ``name`` at ``from_step`` (default HEAD) and switch to it."""
    return _say(navigate.fork(runtime.current(), name, from_step))


def checkout(ref: str | int) -> str:
    """Switch HEAD to a branch (by name) or a step (by number)."""
    return _say(navigate.checkout(runtime.current(), str(ref)))


def _say(line: str) -> str:
    print(line)
    return line
