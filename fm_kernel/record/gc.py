"""Reclaiming orphan objects: chunks and pack records that a failed or
killed write left behind and that no record names.

What is kept is decided from the record, never from what a kernel holds in
memory: every variable entry ever recorded (all states of all branches, old
ones included: entries are append-only) names a group header, which names
its chunks; flow journals name their pickled values by key (in DuckDB and in
a flowlog not yet checkpointed). The in-flight marker's step is checked too:
if it names entries the record does not have (its commit was lost), nothing
is reclaimed. Files newer than the start of the pass are left alone.

Runs only with the history's store open (one writer), from ``fm gc`` and at
open when ``.unsettled`` says a write did not reach a committed record.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .objects import UNSETTLED, ObjectFiles
from .packs import IDX, REC, scan
from .recorder import InflightMarker
from .store import Store
from ..tables import human_bytes

# A journal value's key may sit in JSON nested as a string (a flowlog line, a
# result column), so its quotes can come escaped.
_KEY = re.compile(rb'"key\\*"\s*:\s*\\*"([0-9a-f]{32})')
_HEX = frozenset("0123456789abcdef")


class Deferred(Exception):
    """gc cannot tell what is safe to reclaim (or ran out of time): it reclaims nothing."""


@dataclass
class Reclaimed:
    bytes: int = 0
    loose: int = 0
    temp: int = 0
    packs_removed: int = 0
    packs_rewritten: int = 0
    torn: list[str] = field(default_factory=list)
    skipped: str | None = None

    def line(self) -> str:
        if self.skipped:
            return f"flowmetal gc: nothing reclaimed ({self.skipped})"
        parts = [f"{self.loose} orphan chunk files", f"{self.temp} temp files",
                 f"{self.packs_removed} packs removed", f"{self.packs_rewritten} rewritten"]
        text = f"flowmetal gc: reclaimed {human_bytes(self.bytes)} ({', '.join(parts)})"
        if self.torn:
            text += f"; {len(self.torn)} torn pack tail(s) dropped: " + "; ".join(self.torn)
        return text


def needed(objects: ObjectFiles) -> bool:
    return (objects.root / UNSETTLED).exists()


def collect(store: Store, objects: ObjectFiles, budget: float | None = None) -> Reclaimed:
    """Remove what no record names; ``budget`` seconds bound the pass (at open)."""
    start = time.time()
    deadline = None if budget is None else time.monotonic() + budget
    out = Reclaimed()
    try:
        keep = reachable(store, objects, deadline)
        _loose(objects, keep, start, out, deadline)
        _packs(objects, keep, start, out, deadline)
    except Deferred as exc:
        out.skipped = str(exc)
        return out
    objects.forget()
    try:
        os.unlink(objects.root / UNSETTLED)
    except FileNotFoundError:
        pass
    return out


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise Deferred("out of time at open; `fm gc` finishes it")


def reachable(store: Store, objects: ObjectFiles, deadline: float | None = None) -> set[str]:
    """Every object key some record names."""
    refs = {r[0] for r in store.query(
        "SELECT DISTINCT json_extract_string(entry, '$.ref') FROM fm_var_entries").rows if r[0]}
    _check_marker(store)
    keep: set[str] = set()
    for ref in refs:
        _check(deadline)
        keep.add(ref)
        try:
            header = json.loads(objects.get(ref))
        except Exception:
            continue  # missing or damaged already: nothing of it to protect beyond its key
        keep.update(k for k, _ in header.get("main", ()))
        keep.update(k for b in header.get("buffers", ()) for k, _ in b)
    keep |= _journal_keys(store)
    return keep


def _check_marker(store: Store) -> None:
    rec, _committed = InflightMarker(store.path).read_with_commit()
    ids = (rec.state or {}).get("ids") if rec is not None else None
    if ids and len(store.entries(ids)) < len(set(ids)):
        raise Deferred(f"in-flight step {rec.step} names entries the record lacks")


def _journal_keys(store: Store) -> set[str]:
    keys: set[str] = set()
    for table in ("fm_run_records", "fm_run_step_records"):
        try:
            rows = store.query(f"SELECT * FROM {table}").rows
        except Exception:
            continue  # an older schema without flows
        for row in rows:
            for v in row:
                if isinstance(v, str) and '"key"' in v:
                    keys.update(m.decode() for m in _KEY.findall(v.encode()))
    log = Path(str(store.path) + ".flowlog")
    if log.is_file():
        keys.update(m.decode() for m in _KEY.findall(log.read_bytes()))
    return keys


def _loose(objects: ObjectFiles, keep: set[str], start: float, out: Reclaimed,
           deadline: float | None) -> None:
    root = objects.root
    if not root.is_dir():
        return
    for sub in os.scandir(root):
        if not (sub.is_dir(follow_symlinks=False) and len(sub.name) == 2 and set(sub.name) <= _HEX):
            continue  # packs/, frames/ and anything not ours
        _check(deadline)
        for f in os.scandir(sub.path):
            st = f.stat(follow_symlinks=False)
            if st.st_mtime >= start:
                continue
            temp = f.name.startswith(".tmp-")
            if not temp and (sub.name + f.name in keep or not set(f.name) <= _HEX):
                continue
            os.unlink(f.path)
            out.bytes += st.st_size
            out.temp += temp
            out.loose += not temp


def _packs(objects: ObjectFiles, keep: set[str], start: float, out: Reclaimed,
           deadline: float | None) -> None:
    folder = objects.packs.dir
    if not folder.is_dir():
        return
    ours = objects.packs.writing()
    done: set[str] = set()
    for p in sorted(folder.glob("*.pack")):
        name = p.name[:-5]
        if name == ours or p.stat().st_mtime >= start:
            continue
        _check(deadline)
        records, torn = [], False
        for key, off, n, ok in scan(p):
            if not ok:
                torn = True
                out.torn.append(f"{p.name} at offset {off - REC.size}")
                break
            records.append((key, off, n))
        live = [r for r in records if r[0] in keep]
        dead = sum(REC.size + n for k, _, n in records if k not in keep)
        if live and not torn and dead < p.stat().st_size // 4:
            continue  # mostly live: not worth a rewrite
        before = p.stat().st_size + _size(folder / f"{name}.idx")
        if live:
            _rewrite(objects, p, live)
            out.packs_rewritten += 1
            out.bytes -= sum(REC.size + IDX.size + n for _, _, n in live)
        else:
            out.packs_removed += 1
        os.unlink(p)
        _unlink(folder / f"{name}.idx")
        out.bytes += before
        done.add(name)
    objects.packs.drop(done)
    objects.packs.load()


def _rewrite(objects: ObjectFiles, pack: Path, live: list[tuple[str, int, int]]) -> None:
    """Copy the live records into a new pack, durable before the old one goes."""
    with open(pack, "rb") as f:
        for key, off, n in live:
            f.seek(off)
            objects.packs.put(key, f.read(n))
    objects.packs.sync()


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass
