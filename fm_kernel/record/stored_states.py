"""How a namespace state is stored in ``fm_states``: whole, or as its change
from a whole state (its ``base``).

Why: a state is every name and the entry id it is bound to. Stored whole,
a cell that rebinds one name among 10,000 wrote and bound two 10,000-element
lists (~400 KB) into DuckDB, on the step log's checkpointer thread, holding
the GIL while the cells it shares the process with waited; that was the
p99 of small cells at 10,000 names (docs/benchmarks.md). Stored as a change,
it writes the names it binds differently from its base.

A change is always taken from a *whole* state, never from another change,
so reading any state is at most two rows (its own and its base's), however
long the history: restores, ``Store.step`` and the ``variables`` view
(migrations.py) do bounded work per state. The change grows as the
namespace drifts from its base; once it holds ``WHOLE_AFTER`` names (or
half the state) the next state is stored whole and becomes the base of the
ones after it. A state whose names are not those of the state before it
plus new ones (a name deleted, a rewind) is found against the base over
every name, and stored whole when the base's order would not give its own
back (a name deleted and bound again moves to the end).
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from dataclasses import dataclass
from typing import Any, Sequence

WHOLE_AFTER = 128  # names a stored change may hold before a state is stored whole again
COLUMNS = ("id", "base", "names", "ids", "removed")


def state_id(state: dict[str, Any]) -> str:
    """The id of a state stored whole: a digest of its names and entry ids, in order."""
    blob = "\x1f".join(state["names"]) + "\x1e" + "\x1f".join(state["ids"])
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _change_id(base_id: str, sets: dict[str, str], removed: Sequence[str]) -> str:
    """The id of a state stored as a change: its base and the change name it
    (the same content through another base gets another id, which costs
    only a row)."""
    blob = "\x1e".join((base_id, "\x1f".join(sets), "\x1f".join(sets.values()),
                        "\x1f".join(removed)))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def rebuilt(names: Sequence[str], ids: Sequence[str], removed: Sequence[str] | None,
            base_names: Sequence[str] | None, base_ids: Sequence[str] | None) -> tuple[list, list]:
    """A state's names and entry ids from its row (and its base's, when it is
    a change): the base in its order, names it binds anew after them."""
    if base_names is None:
        return list(names), list(ids)
    bound = dict(zip(base_names, base_ids or ()))
    for n in removed or ():
        bound.pop(n, None)
    bound.update(zip(names, ids))
    return list(bound), list(bound.values())


@dataclass(frozen=True)
class Link:
    """Where a chain of changes stands after a state: the whole state they
    are taken from, what the last state binds differently from it, and the
    last state's lists (the next state's change is found against them)."""

    base_id: str
    base: dict[str, str]
    sets: dict[str, str]
    names: Sequence[str]
    ids: Sequence[str]
    seq: int | None  # the last state's record, when known
    removed: tuple[str, ...] = ()  # base names the last state does not hold


class StateChain:
    """The writer's side, one per Store: which row each new state becomes.
    ``plan`` computes rows without changing the chain; ``advance`` takes the
    plan once its transaction committed (a batch rolled back must not leave
    later changes pointing at a base that was never stored)."""

    def __init__(self) -> None:
        self.link: Link | None = None

    def plan(self, states: Sequence[dict[str, Any]], seqs: Sequence[int | None] = (),
             hints: Sequence[dict[str, Any] | None] = ()) -> tuple[list[str], list, Link | None]:
        """(state id of each state, its row or None when its id is a base's,
        the chain after them). ``seqs`` are the records' sequence numbers and
        ``hints`` each state as its step-log line holds it (steplog.StateDeltas:
        its change from the line before): with them a state's change costs
        what the cell changed, not a pass over every name."""
        link, sids, rows = self.link, [], []
        for i, st in enumerate(states):
            sid, row, link = _next(link, st, seqs[i] if seqs else None, hints[i] if hints else None)
            sids.append(sid)
            rows.append(row)
        return sids, rows, link

    def advance(self, link: Link | None) -> None:
        self.link = link


def _next(link: Link | None, st: dict[str, Any], seq: int | None,
          hint: dict[str, Any] | None) -> tuple[str, tuple | None, Link]:
    names, ids = st["names"], st["ids"]
    found = _changes(link, names, ids, hint)
    size = len(found[0]) + len(found[1]) if found is not None else 0
    if found is None or size >= WHOLE_AFTER or 2 * size >= max(len(names), 1):
        sid = state_id(st)
        whole = Link(sid, dict(zip(names, ids)), {}, names, ids, seq)
        return sid, (sid, None, list(names), list(ids), None), whole
    assert link is not None
    sets, removed = found
    after = Link(link.base_id, link.base, sets, names, ids, seq, removed)
    if not size:  # the base itself, stored already (or earlier in the same plan)
        return link.base_id, None, after
    sid = _change_id(link.base_id, sets, removed)
    return sid, (sid, link.base_id, list(sets), list(sets.values()), list(removed) or None), after


def _changes(link: Link | None, names: Sequence[str], ids: Sequence[str],
             hint: dict[str, Any] | None) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """What ``names``/``ids`` bind differently from the chain's base, and
    the base's names they do not hold, from their change from the last
    state: the step log's line when it is taken from that state, else found
    in C-level passes over both (a batch replayed, a bulk write); over
    every name when they are not the last state's names plus new ones."""
    if link is None:
        return None
    k = len(link.names)
    if hint is not None and link.seq is not None and hint.get("base") == link.seq:
        rebound = [(link.names[i], v) for i, v in hint["set"]]
        added = zip(hint["names"], hint["ids"])
    elif len(names) >= k and all(map(operator.eq, names[:k], link.names)):  # lists or tuples
        at = itertools.compress(range(k), map(operator.ne, ids[:k], link.ids))
        rebound = [(names[i], ids[i]) for i in at]
        added = zip(names[k:], ids[k:])
    else:
        return _rebased(link, names, ids)
    sets, base = dict(link.sets), link.base
    for n, v in rebound:
        if base.get(n) == v:
            sets.pop(n, None)  # back to the base's binding
        else:
            sets[n] = v
    for n, v in added:
        if n in base:  # bound again after a delete: its place is no longer the base's
            return None
        sets[n] = v
    return sets, link.removed


def _rebased(link: Link, names: Sequence[str],
             ids: Sequence[str]) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """A state that is not the last one plus new names (names deleted, HEAD
    moved) as a change from the base, found over every name (rare cells
    only); None when it is large or the base's order would not give its
    order back: it is then stored whole."""
    base, now = link.base, dict(zip(names, ids))
    removed = tuple(n for n in base if n not in now)
    sets = {n: v for n, v in now.items() if base.get(n) != v}
    if len(sets) + len(removed) >= WHOLE_AFTER:
        return None
    order = [n for n in base if n in now] + [n for n in sets if n not in base]
    return (sets, removed) if order == list(names) else None
