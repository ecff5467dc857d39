"""Rebuilding objects no store holds by re-running the statements that made them.

Only the top-level statements of the producing cell that bind the name run
(re-running the whole cell would repeat its other effects: a write, a
request), in a scratch namespace that holds what they read *as it was when
they ran*: the names the statements bind come from the state before the
cell (``x = threading.Semaphore(x)`` reads the old ``x``), every other name
from the state after it (``import threading`` earlier in the same cell). The
live namespace changes only when the rebuild succeeded and, for an object
whose state can be seen, gave that state; otherwise the live object stays
and the report says why.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:
    from .snapshot import Manifest, RestoreReport, VarEntry
    from .states import States


class _Cannot(Exception):
    """The statement cannot be re-run faithfully; the message says why."""


def rebuild(states: States, step: int, report: RestoreReport, target: Manifest) -> None:
    for name in list(report.not_restored):
        e = target.get(name)
        if e is None or e.restorable:
            continue  # stored but unreadable (corrupt, missing): say so, never substitute
        found = states.producer(step, name)
        if found is None:
            continue
        pstep, code = found
        source = binding_source(code, name, states.ns)
        if source is None:
            report.not_restored[name] += (f"; step {pstep} last changed it, by no statement "
                                          "that can be re-run alone")
            continue
        shown = source.strip().replace("\n", "; ")[:60]
        try:
            scratch = _namespace(states, pstep, source, report)
            exec(compile(source, f"<rebuild {name}>", "exec"), scratch)
            obj = scratch[name]
            if e.tracked and states.snap.object_key(obj, scratch) != e.fp:
                raise _Cannot(f"re-running `{shown}` gives another state than step {step}'s")
        except _Cannot as exc:
            report.not_restored[name] += f"; {exc}"
            continue
        except Exception as exc:
            report.not_restored[name] += f"; re-running `{shown}` failed: {type(exc).__name__}: {exc}"
            continue
        _bind(states, report, name, obj, e)


def _bind(states: States, report: RestoreReport, name: str, obj: Any, e: VarEntry) -> None:
    from .snapshot import Manifest

    ns, snap = states.ns, states.snap
    if name in ns:
        snap.aside.put(name, snap.object_key(ns[name], ns), ns[name])  # going forward again finds it
    ns[name] = obj
    del report.not_restored[name]
    if name in report.kept:
        report.kept.remove(name)
    report.restored = sorted({*report.restored, name})
    report.rebuilt = sorted({*report.rebuilt, name})
    entry = e if e.tracked else dataclasses.replace(e, fp=f"!{id(obj):x}")
    held = dict(report.manifest or {})
    held[name] = entry
    report.manifest = Manifest(held)
    snap._remember(ns, list(held), report.manifest, {name})


def _namespace(states: States, pstep: int, source: str, report: RestoreReport) -> dict:
    """The live namespace, with what ``source`` reads set to its value when it ran."""
    rec = states.store.step(pstep)
    try:
        after = states.manifest(pstep)
        before = states.manifest(rec.parent) if rec is not None and rec.parent is not None else {}
    except errors.FlowmetalError as exc:
        raise _Cannot(f"cannot read the states around step {pstep}: {exc}") from exc
    reads, binds = _reads_and_binds(source)
    held = report.manifest or {}
    scratch = dict(states.ns)
    for r in sorted(reads):
        src, when = (before, f"before step {pstep}") if r in binds else (after, f"after step {pstep}")
        if r not in src:
            if r in binds:
                scratch.pop(r, None)  # it did not exist yet: reading it fails as it did then
            continue
        pe = src[r]
        if r in states.ns and r in held and held[r].fp == pe.fp:
            continue  # the live value is the one it read
        if not pe.restorable:
            raise _Cannot(f"it reads {r} as it was {when}, which was not stored")
        scratch[r] = states.snap.load_value(pe, scratch)
    return scratch


def _reads_and_binds(source: str) -> tuple[set[str], set[str]]:
    tree = ast.parse(source)
    reads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    binds = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return reads, binds


def binding_source(code: str, name: str, ns: dict | None = None) -> str | None:
    """The top-level statements of a cell that bind ``name`` by assignment or
    import. Names bound by `with ... as` or loops are not rebuilt: the object
    was closed or exhausted when its cell ended, or depends on the loop. Nor
    are statements that start flow runs (``r = job.start(x)``, ``res =
    job(x)``): re-running them would start the work again."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
        tree = ast.parse(ip.transform_cell(code) if ip is not None else code)
    except SyntaxError:
        return None
    picked = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            bound = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            bound = {(a.asname or a.name).split(".")[0] for a in stmt.names}
        else:
            continue
        if name in bound:
            if _starts_work(stmt, ns or {}):
                return None
            picked.append(stmt)
    if not picked:
        return None
    return ast.unparse(ast.Module(body=picked, type_ignores=[]))


def _starts_work(stmt: ast.stmt, ns: dict) -> bool:
    for node in ast.walk(stmt):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("start", "fork", "signal"):
            return True
        base = func.value if isinstance(func, ast.Attribute) else func
        if isinstance(base, ast.Name) and type(ns.get(base.id)).__name__ in ("Flow", "Step", "Run"):
            return True
    return False
