"""Which branch each step is on now, and the step log built from that.

A step record keeps the branch it ran on; a rewind then moves that branch's
head off it (state/navigate.py names the tip it left, `main@7`). So the
branch a log shows is worked out from the graph, not read off the record:

- a step stays on the branch it ran on while that branch's head is the step
  or a descendant of it;
- otherwise it is on a branch whose head descends from it (one whose tip
  ran on the same branch first, then the newest tip);
- a chain no branch reaches (histories from before abandoned tips were
  named) is named as navigate names them: ``main@<its last step>``;
- a cell that never finished (its kernel died in it) never moved HEAD, so
  the next cell grew from its parent: it is shown on its parent's branch.

Everything here reads the spec's views only, so the same SQL runs on the
kernel's own connection (`%fm log`, `%fm branches`) and through the CLI's
read-only door (`fm log`, also when a live kernel holds the file). No DuckDB.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UsageError
from .rows import Result

Query = Callable[[str, list], Result]

# One row: the step graph, the branches, the kernel sessions and HEAD as the
# record says (a kernel knows its own HEAD; the CLI derives it like Store.head).
# The graph comes as *runs*: a maximal stretch of consecutive steps, each the
# only child of the one before, on one branch, all finished, with no branch
# head or HEAD ($1) inside it. Everything the walk below decides is the same
# for every step of a run, so it walks runs: one per rewind, fork, killed
# cell or branch switch, not one per step (100,000 steps: a handful of runs).
GRAPH_SQL = """
WITH h AS (
    SELECT arg_max(branch, seq) AS head_branch, arg_max(step, seq) AS head_step FROM (
        SELECT seq, branch, step FROM steps WHERE finished_at IS NOT NULL
        UNION ALL
        SELECT seq, payload->>'branch' AS branch, step FROM events
        WHERE kind IN ('rewind', 'checkout', 'resume', 'fork'))
), tips AS (
    SELECT list_concat(coalesce(list(head) FILTER (WHERE head IS NOT NULL), []),
                       [coalesce((SELECT head_step FROM h), -1), coalesce($1, -1)]) AS marks
    FROM branches
), kids AS (
    SELECT parent AS step, count(*) AS n FROM steps WHERE parent IS NOT NULL GROUP BY parent
), x AS (
    SELECT s.step, s.parent, s.branch AS ran_on, s.finished_at IS NOT NULL AS finished,
           lag(s.step) OVER w AS prev, lag(s.branch) OVER w AS prev_on,
           lag(s.finished_at IS NOT NULL) OVER w AS prev_finished, coalesce(k.n, 0) AS siblings
    FROM steps s LEFT JOIN kids k ON k.step = s.parent
    WINDOW w AS (ORDER BY s.step)
), r AS (
    SELECT *, sum(CASE WHEN parent = prev AND step = prev + 1 AND siblings = 1
                            AND ran_on = prev_on AND finished AND prev_finished
                            AND NOT list_contains((SELECT marks FROM tips), prev)
                       THEN 0 ELSE 1 END) OVER (ORDER BY step) AS run
    FROM x
), g AS (
    SELECT min(step) AS first, max(step) AS last, arg_min_null(parent, step) AS parent,
           any_value(ran_on) AS ran_on, bool_and(finished) AS finished
    FROM r GROUP BY run
), s AS (
    SELECT list(last ORDER BY last) AS nodes, list(first ORDER BY last) AS firsts,
           list(parent ORDER BY last) AS parents, list(ran_on ORDER BY last) AS ran_on,
           list(finished ORDER BY last) AS finished
    FROM g
), b AS (
    SELECT list(name ORDER BY created_at, name) AS names,
           list(head ORDER BY created_at, name) AS heads,
           list(base ORDER BY created_at, name) AS bases,
           list(strftime(created_at, '%Y-%m-%d %H:%M:%S') ORDER BY created_at, name) AS created
    FROM branches
), k AS (
    SELECT list(seq ORDER BY seq) AS session_seqs,
           list(strftime("at", '%Y-%m-%d %H:%M:%S') ORDER BY seq) AS session_at
    FROM events WHERE kind = 'kernel_started'
)
SELECT * FROM s, b, k, h
"""

ROW_COLUMNS = "step, status, execution_count, duration_ms, code, seq"


@dataclass
class Graph:
    """The step graph of one history, as GRAPH_SQL returns it: its nodes are
    runs of steps (first..last), each named by its last step; ``parent`` is
    the parent of a run's first step, always the last step of another run.
    Built by hand (tests), a node may be a single step (``first`` empty)."""

    parent: dict[int, int | None]
    ran_on: dict[int, str]
    finished: dict[int, bool]
    heads: dict[str, int | None]  # branch -> head, oldest branch first
    bases: dict[str, int | None]  # as recorded when each branch was made
    created: dict[str, str]
    session_seqs: list[int]
    session_at: list[str]
    head: tuple[str, int | None] | None  # as the record says
    first: dict[int, int] = field(default_factory=dict)  # node -> its first step

    @classmethod
    def load(cls, query: Query, head_step: int | None = None) -> "Graph":
        res = query(GRAPH_SQL, [head_step])
        row = dict(zip(res.columns, res.rows[0]))
        nodes = row["nodes"] or []

        def by_node(name: str) -> dict:
            return dict(zip(nodes, row[name] or []))

        names = row["names"] or []
        head = (row["head_branch"], row["head_step"]) if row["head_branch"] else None
        return cls(by_node("parents"), by_node("ran_on"), by_node("finished"),
                   dict(zip(names, row["heads"] or [])), dict(zip(names, row["bases"] or [])),
                   dict(zip(names, row["created"] or [])),
                   list(row["session_seqs"] or []), list(row["session_at"] or []), head,
                   by_node("firsts"))

    def session(self, seq: int) -> int:
        """1-based number of the kernel session that wrote the record ``seq``."""
        return bisect.bisect_left(self.session_seqs, seq)

    def steps_of(self, node: int) -> range:
        return range(self.first.get(node, node), node + 1)

    @property
    def total(self) -> int:
        return sum(len(self.steps_of(n)) for n in self.parent)

    def ancestry(self, tip: int | None) -> list[int]:
        """The nodes from ``tip``'s up to the root."""
        out: list[int] = []
        while tip is not None and tip in self.parent:
            out.append(tip)
            tip = self.parent[tip]
        return out


def _spans(g: Graph) -> tuple[dict[int, int], dict[int, int]]:
    """Entry and exit numbers of a depth-first walk: ``a`` is an ancestor of
    ``d`` (or ``d`` itself) exactly when ``tin[a] <= tin[d] <= tout[a]``."""
    children: dict[int | None, list[int]] = {}
    for step in sorted(g.parent):
        up = g.parent[step]
        children.setdefault(up if up in g.parent else None, []).append(step)
    tin: dict[int, int] = {}
    tout: dict[int, int] = {}
    clock = 0
    stack = [(s, False) for s in reversed(children.get(None, []))]
    while stack:
        step, done = stack.pop()
        if done:
            tout[step] = clock
            continue
        clock += 1
        tin[step] = clock
        stack.append((step, True))
        stack.extend((c, False) for c in reversed(children.get(step, [])))
    return tin, tout


def lines(g: Graph, head: tuple[str, int | None] | None) -> dict[int, str]:
    """The branch each step is on now (module docstring); ``head`` is HEAD
    (branch, step), which stands for its branch's head."""
    tin, tout = _spans(g)
    tips = {name: h for name, h in g.heads.items() if h in tin}
    if head is not None:
        tips.pop(head[0], None)
        if head[1] in tin:
            tips[head[0]] = head[1]

    def under(step: int, tip: int) -> bool:
        return tin[step] <= tin[tip] <= tout[step]

    # newest tip first among equals; tips that ran on the step's branch first
    order = sorted(tips.items(), key=lambda kv: -kv[1])
    out: dict[int, str] = {}
    stray: list[int] = []
    for step in sorted(g.parent):
        own = g.ran_on[step]
        if own in tips and under(step, tips[own]):
            out[step] = own
            continue
        found = [n for n, t in order if under(step, t)]
        found.sort(key=lambda n: g.ran_on.get(tips[n]) != own)
        if found:
            out[step] = found[0]
        else:
            stray.append(step)
    _name_strays(g, stray, out)
    return out


def _name_strays(g: Graph, stray: list[int], out: dict[int, str]) -> None:
    """Steps no branch reaches: a never-finished cell goes with its parent,
    the rest by chain, each chain named after its last step."""
    strays = set(stray)
    kids: dict[int, list[int]] = {}
    for step in stray:
        if g.parent[step] in strays:
            kids.setdefault(g.parent[step], []).append(step)
    dead = {s for s in stray if not g.finished[s] and s not in kids}
    for step in sorted(strays - dead, reverse=True):
        later = [k for k in kids.get(step, []) if k not in dead]
        out[step] = out[max(later)] if later else f"{g.ran_on[step]}@{step}"
    for step in sorted(dead):
        up = g.parent[step]
        out[step] = out.get(up, g.ran_on[step]) if up is not None else g.ran_on[step]


def bases(g: Graph, line: dict[int, str]) -> dict[str, int | None]:
    """Where each branch forked from: the parent of its first step, or, for a
    branch with no step of its own yet, the step it was made at."""
    first: dict[str, int] = {}
    for node in sorted(line):  # runs do not interleave: the first run is the first step
        first.setdefault(line[node], node)
    return {name: (g.parent[first[name]] if name in first else g.bases.get(name))
            for name in g.heads}


@dataclass
class StepLog:
    """What `%fm log` and `fm log` print: rows in step order, HEAD, and the
    kernel session of each row (number, start time)."""

    rows: list[tuple] = field(default_factory=list)  # step, branch, parent, status, in, ms, code
    head: int | None = None
    sessions: list[tuple[int, str]] = field(default_factory=list)
    total: int = 0  # steps in the whole history


def shown(g: Graph, line: dict[int, str], tip: int | None, every: bool,
          limit: int | None = None) -> list[tuple[int, int]]:
    """The steps a log shows, each with its node, the last ``limit`` of
    them: all steps, or ``tip``'s ancestry with the never-finished cells
    that hang off it (a kernel died in them; nothing grew from them, so no
    ancestry holds them, but they must not vanish)."""
    if every:
        nodes = sorted(g.parent)
    else:
        path = g.ancestry(tip)
        on = set(path)
        grown = set(g.parent.values())
        dead = [s for s, up in g.parent.items() if not g.finished[s] and up in on
                and s not in grown]
        nodes = sorted([*path, *dead])
    out: list[tuple[int, int]] = []
    for node in reversed(nodes):
        for step in reversed(g.steps_of(node)):
            if limit and len(out) >= limit:
                return out[::-1]
            out.append((step, node))
    return out[::-1]


def step_log(query: Query, head: tuple[str, int | None] | None = None, branch: str | None = None,
             every: bool = False, limit: int | None = 20) -> StepLog:
    """The log of HEAD's ancestry (``head`` given by a kernel, else as the
    record says), of ``branch``'s, or of ``every`` step; the last ``limit``."""
    g = Graph.load(query, head[1] if head else None)
    head = head if head is not None else g.head
    line = lines(g, head)
    if branch is not None and branch not in g.heads:
        raise UsageError(f"no branch {branch!r}; the branches are {', '.join(g.heads)}")
    tip = g.heads[branch] if branch is not None and (head is None or branch != head[0]) \
        else (head[1] if head else None)
    steps = dict(shown(g, line, tip, every, limit))
    log = StepLog(head=head[1] if head else None, total=g.total)
    if not steps:
        return log
    res = query(f"SELECT {ROW_COLUMNS} FROM steps"
                " WHERE step IN (SELECT * FROM unnest(?::BIGINT[])) ORDER BY step", [list(steps)])
    for step, status, count, ms, code, seq in res.rows:
        node = steps[step]
        parent = step - 1 if step != g.steps_of(node)[0] else g.parent[node]
        log.rows.append((step, line[node], parent, status, count, ms, code))
        n = g.session(seq)
        log.sessions.append((n, g.session_at[n - 1] if 0 < n <= len(g.session_at) else ""))
    return log


def branch_table(query: Query, head: tuple[str, int | None] | None = None
                 ) -> tuple[list[tuple], str | None]:
    """(name, head, base, created) of every branch, oldest first, base as
    ``bases`` says; and HEAD's branch (``head`` from a kernel, else as the
    record says)."""
    g = Graph.load(query, head[1] if head else None)
    head = head if head is not None else g.head
    base = bases(g, lines(g, head))
    rows = [(name, head[1] if head and head[0] == name else tip, base[name], g.created[name])
            for name, tip in g.heads.items()]
    return rows, head[0] if head else None
