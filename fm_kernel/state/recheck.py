"""Small objects a cell did not name are fingerprinted again: it catches
mutation through references the analysis cannot see (a library that kept a
list, a callback, a thread).

In turn round the names, within a time budget per look (at most SMALL_SCAN
names, so the cost does not grow with the namespace): with hundreds of names,
checking them all every cell made each cell cost ~60 ms (bench/soak.py); in
turn, a hidden mutation is caught within a few cells instead of at once.
Objects that proved slow to check are left to the analysis.

The looks run while the kernel is idle between cells (fm_kernel/idle.py
schedules them after each reply), so the reply does not wait for them: an
idle look that finds an object changed leaves its name for the next capture,
which stores it. Only when no idle look ran since the last capture (cells
sent back to back, as by Run All) does the capture take its turn on the
reply path. A mutation made during a cell through a hidden reference is then
stored one cell late the first time; the name is "hot" from then on, looked
at on the reply path of every cell for HOT_CELLS cells, so the next ones
land in the cell that made them.
An idle round stops once every small name has been looked at; while the
kernel stays idle, rounds come again, further apart (fm_kernel/idle.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manifest import Manifest
    from .snapshot import Snapshotter

log = logging.getLogger(__name__)

SMALL_ONE = 256 * 1024   # objects this small are re-fingerprinted every cell...
SMALL_TOTAL = 1024 * 1024  # ...up to this many bytes in all...
SMALL_BUDGET = 0.004      # ...within this many seconds a look, taking turns...
SMALL_SCAN = 64           # ...looking at this many names at most...
SMALL_COST = 0.002        # ...unless walking and pickling one took longer than this (s):
                          # a matplotlib Figure is small in bytes but costs ~40 ms a cell
HOT_CELLS = 100  # a name found changed by a re-check is re-checked on the reply path this many cells
HOT_MOST = 32    # names re-checked on the reply path that way, at most


class Rechecks:
    """Whose turn it is, what each name cost to check, and what idle looks found."""

    def __init__(self) -> None:
        self.cost: dict[str, float] = {}  # seconds the last check of each name took
        self.turn = 0  # where the next round of small re-checks starts
        self.changed: set[str] = set()  # names idle looks found differing from the live state
        self.idle_of: str | None = None  # signature of the state idle looks compared against
        self.idle_seen = 0  # names idle looks checked since the last capture
        self.hot: dict[str, int] = {}  # names re-checks found changed -> captures left on the reply path

    def pick(self, prev: Manifest, is_live: Callable[[str], bool]) -> set[str]:
        """The small names whose turn it is, within the budget."""
        names = prev.names()
        out: set[str] = set()
        total, spent, i = 0, 0.0, self.turn % len(names) if names else 0
        for _ in range(min(len(names), SMALL_SCAN)):
            n = names[i]
            i = (i + 1) % len(names)
            e = prev[n]
            if e.size_bytes > SMALL_ONE or self.cost.get(n, 0.0) > SMALL_COST or not is_live(n):
                continue
            if spent > SMALL_BUDGET:
                i = (i - 1) % len(names)  # its turn comes first next time
                break
            if total + e.size_bytes > SMALL_TOTAL:
                continue  # too big for what is left of the bytes: smaller names still fit
            out.add(n)
            total += e.size_bytes
            spent += self.cost.get(n, 0.0002)
        self.turn = i
        return out

    def on_reply(self, prev: Manifest, is_live: Callable[[str], bool]) -> set[str]:
        """What a capture adds to its candidates: what idle looks found
        changed, or, with no idle look since the last capture, a turn; and
        the names re-checks found changed lately (hot)."""
        hot = {n for n in self.hot if is_live(n)}
        if self.idle_of == prev.signature():
            return {n for n in self.changed if is_live(n)} | hot
        return self.pick(prev, is_live) | hot

    def idle(self, snap: Snapshotter, ns: dict[str, Any], live: Manifest, new_round: bool = False) -> bool:
        """One idle look at ``live``'s small names against ``ns``; whether
        the round has more to look at (``new_round``: the last one ended
        and the kernel is still idle: go round again, keeping what was found)."""
        sig = live.signature()
        if self.idle_of != sig:
            self.idle_of, self.changed, self.idle_seen = sig, set(), 0
        elif new_round:
            self.idle_seen = 0
        before = self.turn
        names = self.pick(live, lambda n: n in ns and snap._walkable(ns, n))
        try:
            for n in names:
                t = time.perf_counter()
                obj = ns[n]
                fp = snap.content_fp(obj, ns) or snap.object_key(obj, ns)
                self.cost[n] = time.perf_counter() - t
                if fp != live[n].fp:
                    self.changed.add(n)
        except BaseException:
            self.idle_of = None  # the capture takes its turn on the reply path after all
            raise
        # positions passed this look (back where it started: all of them)
        self.idle_seen += (self.turn - before) % len(live) or len(live) if len(live) else 0
        return self.idle_seen < len(live)

    def captured(self, cost: dict[str, float], found: set[str] = frozenset()) -> None:
        """A capture or restore made a new live state: idle looks start
        over. ``found``: names its re-checks found changed, which something
        the analysis cannot see mutates: from now on their changes are
        looked for on the reply path too, so they land in the cell that made them."""
        self.cost.update(cost)
        self.changed, self.idle_of, self.idle_seen = set(), None, 0
        self.hot = {n: k - 1 for n, k in self.hot.items() if k > 1}
        for n in found:
            self.hot[n] = HOT_CELLS
        while len(self.hot) > HOT_MOST:
            del self.hot[min(self.hot, key=self.hot.__getitem__)]
