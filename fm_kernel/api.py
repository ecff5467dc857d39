"""The history half of the public Python API (`fm.history()`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import querying, runtime
from .store import Store


class History:
    """Read access to one history: the current kernel's, or a file's."""

    def __init__(self, store: Store, frames: querying.FrameResolver | None = None):
        self._store = store
        self._frames = frames

    @property
    def path(self) -> Path:
        return self._store.path

    def steps(self, branch: str | None = None):
        """Steps as a DataFrame, oldest first (all branches unless one is named)."""
        where, params = ("WHERE branch = ?", [branch]) if branch else ("", [])
        return self._store.query(f"SELECT * EXCLUDE (seq) FROM steps {where} ORDER BY step", params).to_pandas()

    def sql(self, query: str, params: list[Any] | None = None):
        """Run read-only SQL over the history views; returns a DataFrame.

        ``frame('df', 12)`` in the query reads DataFrame ``df`` as it was after
        step 12. DuckDB's ``?`` parameters take values from ``params``."""
        return querying.run(self._store, query, params or [], self._frames).to_pandas()

    def __repr__(self) -> str:
        return f"<fm.History {self.path}>"


def history(path: str | Path | None = None) -> History:
    """The history of this kernel, or of the file at ``path`` (opened read-only)."""
    if path is not None:
        return History(Store.open(Path(path), read_only=True))
    rt = runtime.current()
    return History(rt.require_store(), rt.frame_path)
