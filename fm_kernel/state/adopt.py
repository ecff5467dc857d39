"""`%fm adopt PATH`: continue the history of another notebook (a copy's
original) in this fresh one, as a fork at its HEAD."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from .. import errors
from ..record import location
from ..record.identity import SIDECARS, count_steps
from ..record.store import copy_database, readable
from . import navigate



def adopt(rt: Any, source: str) -> str:
    """Continue the history of another notebook (a copy's original) in this
    fresh one: its records are copied in and a branch named after this
    notebook is forked at its HEAD, with the namespace restored there."""
    src = _adoptable(source, rt.plan.cwd)
    store = rt.require_store()
    target = store.path
    if str(target) == ":memory:" or src.resolve() == Path(target).resolve():
        raise errors.UsageError(f"%fm adopt: {src} is this kernel's own history")
    if store.step_count():
        raise errors.UsageError(
            f"%fm adopt: this notebook's history ({target}) has {store.step_count()} steps "
            "already; adopt continues another history only in a fresh one (move it aside first)")
    steps = count_steps(src)
    if not steps:
        raise errors.UsageError(f"%fm adopt: no steps to continue in {src}")
    rt.reopen(lambda path: _copy_history(src, path))
    head = rt.head
    name = _branch_for(rt)
    rt.require_store().append_event("adopted", step=head, payload={"from": str(src), "steps": steps})
    if head is None:
        return f"adopted {source} ({steps} steps); it has no HEAD to continue from"
    rt.head = None  # the namespace holds no step yet: fork restores HEAD's state
    line = navigate.fork(rt, name, head)
    return f"adopted {source} ({steps} steps, copied into {target}); {line}"


def _adoptable(source: str, cwd: Path) -> Path:
    p = Path(source).expanduser()
    p = p if p.is_absolute() else cwd / p
    history = location.beside(p) if p.suffix == ".ipynb" else p
    if not history.is_file():
        raise errors.UsageError(f"%fm adopt: no history at {history}; give a notebook that "
                                "has one, or a .duckdb history file")
    problem = readable(history)
    if problem is not None:
        raise errors.UsageError(
            f"%fm adopt: cannot read {history} ({problem[:120]}); if its "
            "kernel is running, shut it down first")
    return history


def _copy_history(src: Path, target: Path) -> None:
    """Replace the (empty) history at ``target`` with a consistent copy of
    ``src``: database through DuckDB, objects as hard links where possible."""
    for suffix in ("", *SIDECARS, ".endpoint.json"):
        p = Path(str(target) + suffix)
        if p.is_dir():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()
    copy_database(src, target)
    os.chmod(target, 0o600)
    objects = Path(str(src) + ".objects")
    if objects.is_dir():
        shutil.copytree(objects, Path(str(target) + ".objects"), copy_function=_link_or_copy)
    log_file = Path(str(src) + ".flowlog")
    if log_file.is_file():
        shutil.copy2(log_file, Path(str(target) + ".flowlog"))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # objects are written once, named by their digest
    except OSError:
        shutil.copy2(src, dst)


def _branch_for(rt: Any) -> str:
    stem = rt.plan.notebook.stem if rt.plan.notebook else "adopted"
    base = re.sub(r"[^A-Za-z0-9_.@/-]+", "-", stem).strip("-.") or "adopted"
    if base.isdigit():
        base = f"nb-{base}"
    heads = rt.require_store().branch_heads()
    name, n = base, 2
    while name in heads:
        name, n = f"{base}-{n}", n + 1
    return name
