"""How a notebook and its history find each other (docs/where-history-lives.md).

A history is a file beside its notebook, named after it. What ties the two
together when the name changes is the cells: JupyterLab, Notebook 7 and VS
Code send each cell's id with its execute request, nbformat >= 4.5 notebooks
keep those ids, and every step records the id of the cell it ran.

So a kernel that knows its notebook opens that notebook's history at once,
in the background, unless the history does not exist yet and other
notebooks' histories are in the folder: then it waits for the first cell
(`Plan.path is None`) and looks for that cell's id in them.

- one of them holds the id and its notebook is gone: the notebook was
  renamed. Its files are renamed to the new name and the history continues.
- they hold the id but their notebooks exist: this notebook is a copy. It
  starts a history of its own and says `%fm adopt NAME` continues the other.

A kernel that does not know its notebook (VS Code, nbclient, papermill
without our engine, `jupyter console`) learns it from VS Code's silent
``__vsc_ipynb_file__ = '...'`` execution, or else records the whole session
to a history of its own, ``session-<date>-<kernel id>.duckdb``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from . import location
from .store import peek_count

log = logging.getLogger(__name__)

SIDECARS = (".wal", ".steplog", ".objects", ".flowlog", ".inflight")  # move with the database
MAX_CANDIDATES = 50  # newest first: a folder of hundreds of histories stays quick
_VSC = re.compile(r"^\s*__vsc_ipynb_file__\s*=\s*(.+?)\s*$", re.M)


@dataclass
class Plan:
    """What a kernel knows about where its history is, before it opens it."""

    path: Path | None  # open this now; None: decide on the first cell
    notebook: Path | None  # the notebook, when known
    cwd: Path
    explicit: bool = False  # FM_HISTORY, or a path given by the caller


@dataclass
class Binding:
    path: Path
    notice: str | None = None
    event: tuple[str, dict] | None = None  # recorded once the history is open


@dataclass
class Match:
    history: Path
    notebook: Path  # where its notebook was
    steps: int

    @property
    def orphan(self) -> bool:
        return not self.notebook.exists()


def plan(env: dict[str, str] | None = None, cwd: Path | None = None) -> Plan:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if env.get("FM_HISTORY"):
        return Plan(location.history_path(env, cwd), None, cwd, explicit=True)
    nb = location.notebook_path(env, cwd)
    return Plan(None, None, cwd) if nb is None else for_notebook(nb, cwd)


def for_notebook(notebook: Path, cwd: Path) -> Plan:
    path = location.beside(notebook)
    if path.exists() or not candidates(path):
        return Plan(path, notebook, cwd)
    return Plan(None, notebook, cwd)


def bind(p: Plan, kernel_id: str, cell_id: str | None) -> Binding:
    """The history for a kernel that waited for its first cell."""
    if p.path is not None:
        return Binding(p.path)
    if p.notebook is None:
        return Binding(location.session_path(p.cwd, kernel_id))
    path = location.beside(p.notebook)
    if path.exists() or not cell_id:
        return Binding(path)
    return _by_cell(path, p.notebook, cell_id)


def _by_cell(path: Path, notebook: Path, cell_id: str) -> Binding:
    found = matches(path, cell_id)
    orphans = [m for m in found if m.orphan]
    if len(orphans) == 1:
        old = orphans[0]
        try:
            rename_history(old.history, path)
        except OSError as exc:
            return Binding(path, f"flowmetal: this notebook looks renamed from {old.notebook.name}, "
                                 f"but its history could not be moved ({exc}); `%fm adopt "
                                 f"{old.notebook.name}` continues it as a fork")
        return Binding(path, f"flowmetal: renamed from {old.notebook.name}: continuing its history",
                       ("notebook_renamed", {"from": old.notebook.name, "to": notebook.name,
                                             "cell_id": cell_id}))
    names = ", ".join(m.notebook.name for m in (orphans or found))
    if orphans:
        return Binding(path, f"flowmetal: this notebook's cells match the histories of {names} "
                             "(notebooks gone); it starts its own; `%fm adopt NAME` continues one")
    if found:
        return Binding(path, f"flowmetal: this notebook's cells are also in {names}'s history "
                             f"(a copy?); it starts its own; `%fm adopt {found[0].notebook.name}` "
                             "continues from that one")
    return Binding(path)


def candidates(path: Path) -> list[Path]:
    """Other notebooks' histories in the folder of ``path``, newest first."""
    folder = path.parent
    if not folder.is_dir():
        return []
    try:
        found = [p for p in folder.glob("*.ipynb.duckdb") if p != path and p.is_file()]
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return found[:MAX_CANDIDATES]


def matches(path: Path, cell_id: str) -> list[Match]:
    """The histories beside ``path`` that recorded a step of cell ``cell_id``."""
    out = []
    for cand in candidates(path):
        n = _count(cand, "SELECT count(*) FROM fm_step_records WHERE cell_id = ?", [cell_id])
        if n:
            nb = cand.parent.parent / cand.name[: -len(".duckdb")]
            out.append(Match(cand, nb, n))
    return out


def _count(history: Path, sql: str, params: list) -> int:
    try:
        return peek_count(history, sql, params)
    except errors.HistoryError as exc:  # held by a live kernel, or not a history
        log.info("not looking into %s: %s", history, exc)
        return 0


def count_steps(history: Path) -> int:
    """How many steps ``history`` holds (0 when it cannot be read)."""
    return _count(history, "SELECT count(DISTINCT step) FROM fm_step_records", [])


def rename_history(old: Path, new: Path) -> None:
    """Move a history and its sidecars to a new name: sidecars first, the
    database last (it is the history; a second try finishes a half move)."""
    for suffix in SIDECARS:
        src, dst = Path(str(old) + suffix), Path(str(new) + suffix)
        if os.path.lexists(src) and not os.path.lexists(dst):
            os.rename(src, dst)
    stale = Path(str(old) + ".endpoint.json")  # its kernel is gone; a new one writes its own
    if stale.exists():
        stale.unlink()
    if os.path.lexists(new):
        raise FileExistsError(f"{new} exists already")
    os.rename(old, new)


def vscode_notebook(code: str) -> Path | None:
    """The notebook VS Code names in its silent ``__vsc_ipynb_file__ = '...'``."""
    m = _VSC.search(code)
    if m is None:
        return None
    try:
        value = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    return Path(value) if isinstance(value, str) and value.endswith(".ipynb") else None


def session_histories_for(notebook: Path) -> list[tuple[Path, int, int]]:
    """Session histories beside ``notebook`` whose steps ran its cells, as
    (history, cells matched, code cells), best first. Batch runners send no
    cell ids, so the code is what is matched."""
    try:
        nb = json.loads(notebook.read_text())
        codes = sorted({"".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                        for c in nb.get("cells", []) if c.get("cell_type") == "code"} - {""})
    except (OSError, ValueError, KeyError, TypeError):
        return []
    folder = notebook.parent / ".flowmetal"
    if not codes or not folder.is_dir():
        return []
    found = []
    for h in sorted(folder.glob(f"{location.SESSION_PREFIX}*.duckdb")):
        n = _count(h, "SELECT count(DISTINCT code) FROM fm_step_records"
                      " WHERE code IN (SELECT unnest(?::VARCHAR[]))", [codes])
        if n * 2 >= len(codes):
            found.append((h, n, len(codes)))
    return sorted(found, key=lambda t: (-t[1], str(t[0])))


def missing_history_hint(notebook: Path) -> str:
    """What to say when ``notebook`` has no history of its own."""
    found = session_histories_for(notebook)
    where = location.beside(notebook)
    if found:
        names = "; ".join(f"{h} ({n} of {total} cells)" for h, n, total in found)
        return (f"no history at {where}; this notebook's cells were run in session "
                f"histories: {names} (`--history` one of them)")
    return (f"no history at {where}; a kernel that was not told the notebook records to "
            f"{where.parent}/session-*.duckdb (`ls` there; `--history FILE` reads one)")
