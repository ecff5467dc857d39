"""HEAD moves: rewind, undo, fork, checkout, resume. Each restores the
namespace through the timeline, records the move as an event (and as a
branch record, so `branches` shows the new head), and returns one line.
The events are what a next kernel derives HEAD from (Store.head)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from .. import errors
from .states import check_branch_name, progress_printer

if TYPE_CHECKING:
    from ..runtime import Runtime


Progress = Callable[[int, int], None]  # bytes done, bytes in all


def _move(rt: "Runtime", step: int, branch: str, kind: str, verb: str,
          progress: Progress | None = None, rebuild: Sequence[str] = ()) -> str:
    tl = rt.require_states()
    store = tl.store
    heads = store.branch_heads()
    before_branch, before = rt.branch, rt.head
    # A tip that only the branch we are leaving pointed at would become
    # reachable by number alone; give it a name before moving away.
    if (before is not None and heads.get(before_branch) == before and before != step
            and before_branch == branch and list(heads.values()).count(before) == 1):
        keep = f"{before_branch}@{before}"
        if keep not in heads:
            store.append_branch(keep, before, before)
    moved = tl.restore(step, progress or progress_printer(verb), rebuild)  # a view shows its own
    moved.branch = branch
    rt.branch, rt.head = branch, step
    store.append_branch(branch, step, None)
    store.append_event(kind, step=step, payload={
        "from_branch": before_branch, "from_step": before, "branch": branch,
        "restored": moved.report.restored, "deleted": moved.report.deleted,
        "not_restored": moved.report.not_restored, "ms": round(moved.seconds * 1000, 1),
        "read_bytes": moved.report.read_bytes, "patched": moved.report.patched})
    return moved.line(verb)


def rewind(rt: "Runtime", step: int, progress: Progress | None = None,
           rebuild: Sequence[str] = ()) -> str:
    return _move(rt, step, rt.branch, "rewind", "rewound to", progress, rebuild)


def undo(rt: "Runtime", n: int = 1, rebuild: Sequence[str] = ()) -> str:
    if n < 1:
        raise errors.UsageError("undo takes a number of steps of at least 1")
    if rt.head is None:
        raise errors.UsageError("nothing to undo: the namespace holds no recorded step yet")
    target = rt.require_states().parent_chain(rt.head, n)
    return _move(rt, target, rt.branch, "rewind", f"undid {n}, rewound to", rebuild=rebuild)


def fork(rt: "Runtime", name: str, from_step: int | None = None,
         progress: Progress | None = None) -> str:
    tl = rt.require_states()
    check_branch_name(name, tl.store.branch_heads())
    base = rt.head if from_step is None else from_step
    if base is None:
        raise errors.UsageError("nothing to fork from yet: run a cell or give --from STEP")
    if tl.store.step(base) is None:
        raise errors.NoSuchStep(base)
    tl.store.append_branch(name, base, base)
    if base == rt.head:
        rt.branch = name
        tl.store.append_event("fork", step=base, payload={"branch": name, "base": base})
        return f"forked {name} at step {base}; new cells go on {name}"
    line = _move(rt, base, name, "fork", "forked from", progress)
    return line + f"; new cells go on {name}"


def checkout(rt: "Runtime", ref: str, rebuild: Sequence[str] = ()) -> str:
    tl = rt.require_states()
    heads = tl.store.branch_heads()
    if ref in heads:
        head = heads[ref]
        if head is None:
            # nothing to restore, but recorded like any move: the next
            # kernel must be on this branch too, with the same HEAD step
            tl.store.append_event("checkout", step=rt.head, payload={
                "from_branch": rt.branch, "from_step": rt.head, "branch": ref})
            rt.branch = ref
            return f"on branch {ref} (no steps yet)"
        return _move(rt, head, ref, "checkout", "checked out", rebuild=rebuild)
    if not ref.isdigit():
        raise errors.UsageError(f"no branch {ref!r} and not a step number; `%fm branches` lists branches")
    rec = tl.store.step(int(ref))
    if rec is None:
        raise errors.NoSuchStep(ref)
    return _move(rt, rec.step, rec.branch, "checkout", "checked out", rebuild=rebuild)


def resume(rt: "Runtime") -> str | None:
    """Restore HEAD as the previous kernel left it (None if it had none):
    what a restart set aside, whatever ran since. A HEAD step whose state
    was not recorded brings back its nearest ancestor's state instead."""
    tl = rt.require_states()
    head = tl.store.head(before_seq=rt.started_seq)
    if head is None or head[1] is None:
        return None
    branch, step = head
    target: int | None = step
    while target is not None and (rec := tl.store.step(target)) is not None and rec.state is None:
        target = rec.parent
    if target is None:
        return None
    line = _move(rt, target, branch, "resume", "resumed")
    return line if target == step else line + f" (step {step} has no recorded state)"
