"""The text forms of the timeline and the inspector, for frontends that
cannot show widgets (`jupyter console`, a `jupyter_client` script, nbconvert):
the branch graph drawn like `git log --graph --oneline`, and a step's
variables as a table. Pure functions over rows and manifests; `timeline_text`
and `inspect_text` read them through `Source`.

    * 1  ok     import pandas as pd
    * 2  ok     x = 2
    |\\
    | * 5  ok     (experiment) y = 1
    * | 3  ok     (HEAD -> main) x = 3

The graph is the widget's layout (`render.layout`), oldest step first as the
widget lists them, two columns a lane: ``*`` a step, ``|`` a line passing
by (``:`` dashed: the first cell after a clean restart, joined to the step
before it on its branch), and under a step whose children fork, ``\\`` or
``/`` to each new line.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..tables import first_line, format_table, human_bytes
from .render import GraphRow, layout
from .source import Source, StepRow
from .variables import natural_key

__all__ = ["graph_lines", "inspect_text", "timeline_text", "variables_text"]

SHOWN = 50        # the newest steps a text timeline shows (-n to change)
CODE_WIDTH = 72   # a first line of code is cut here


def _decorations(step: int, labels: Mapping[int, list[str]], head: int | None,
                 branch: str) -> str:
    """git's ``(HEAD -> main, main@4)`` for ``step``: HEAD, then the branch heads."""
    names = sorted(labels.get(step, ()), key=natural_key)
    if step == head:
        if branch in names:
            names.remove(branch)
            names.insert(0, f"HEAD -> {branch}")
        else:
            names.insert(0, "HEAD")
    return f"({', '.join(names)}) " if names else ""


def _node_line(g: GraphRow, width: int) -> str:
    cells = [" "] * width
    for lane, _colour, dashed in g.through:
        cells[lane] = ":" if dashed else "|"
    cells[g.lane] = "*"
    return " ".join(cells)


def _fork_line(g: GraphRow, width: int) -> str | None:
    """The connector under a step whose children leave for other lanes, or None."""
    new = [lane for lane, _, _ in g.out if lane != g.lane]
    if not new:
        return None
    chars = [" "] * (2 * width)
    for lane, _colour, dashed in g.through:
        chars[2 * lane] = ":" if dashed else "|"
    if any(lane == g.lane for lane, _, _ in g.out):
        chars[2 * g.lane] = "|"
    for lane in new:
        if lane > g.lane:
            for c in range(2 * g.lane + 1, 2 * lane - 1):
                if chars[c] == " ":
                    chars[c] = "-"
            chars[2 * lane - 1] = "\\"
        else:
            for c in range(2 * lane + 2, 2 * g.lane):
                if chars[c] == " ":
                    chars[c] = "-"
            chars[2 * lane + 1] = "/"
    return "".join(chars).rstrip()


def graph_lines(rows: Sequence[StepRow], heads: Mapping[str, int | None], head: int | None,
                branch: str, shown: int = SHOWN) -> list[str]:
    """``rows`` (oldest first) as graph lines; the last ``shown`` steps only."""
    graph = layout([(r.step, r.branch, r.parent) for r in rows])
    start = max(0, len(rows) - shown)
    graph, rows = graph[start:], rows[start:]
    width = 1 + max([g.lane for g in graph] + [ln for g in graph for ln, _, _ in g.through]
                    + [ln for g in graph for ln, _, _ in g.out] + [0])
    labels: dict[int, list[str]] = {}
    for name, h in heads.items():
        if h is not None:
            labels.setdefault(h, []).append(name)
    digits = len(str(max((r.step for r in rows), default=1)))
    out = []
    for r, g in zip(rows, graph):
        code = first_line(r.code)
        code = code if len(code) <= CODE_WIDTH else code[:CODE_WIDTH - 1] + "…"
        out.append(f"{_node_line(g, width)} {str(r.step).ljust(digits)}  "
                   f"{(r.status or '?'):<11} {_decorations(r.step, labels, head, branch)}{code}"
                   .rstrip())
        fork = _fork_line(g, width)
        if fork:
            out.append(fork)
    return out


def timeline_text(source: Source | None = None, all_branches: bool = False,
                  shown: int = SHOWN) -> str:
    """`%fm timeline` where widgets cannot be shown: the header line, then
    the graph of the newest ``shown`` steps (HEAD's branch, or all)."""
    source = source or Source()
    branch = source.branch
    rows = source.steps(None if all_branches else branch)
    head = source.head
    where = "on all branches" if all_branches else f"on branch {branch}"
    top = (f"HEAD: {branch} @ step {head if head else '–'} · {len(rows):,} "
           f"step{'s' * (len(rows) != 1)} {where}")
    if not rows:
        return top + "\n(no steps yet" + ("" if all_branches else
                                          "; `%fm timeline --all` shows every branch") + ")"
    lines = graph_lines(rows, source.heads(), head, branch, shown)
    if len(rows) > shown:
        top += f" (the newest {shown:,}; -n N shows more)"
    return "\n".join([top, *lines])


def variables_text(entries: Mapping[str, Any], changed: set[str] | frozenset[str] = frozenset()
                   ) -> str:
    """A step's variables as a table: the names the step changed first
    (marked ``*``), then in natural order; a note where a name is not
    tracked (whether it changed cannot be seen) or cannot be restored."""
    names = sorted(entries, key=lambda n: (n not in changed, natural_key(n)))
    rows = []
    for n in names:
        e = entries[n]
        notes = [] if getattr(e, "tracked", True) else ["not tracked"]
        if not getattr(e, "restorable", True):
            notes.append("not restorable" + (f": {e.reason}" if e.reason else ""))
        rows.append((("* " if n in changed else "  ") + n, e.type, human_bytes(e.size_bytes),
                     e.summary, "; ".join(notes)))
    return format_table(["  name", "type", "size", "summary", "note"], rows, width=50)


def inspect_text(source: Source | None = None, step: int | None = None) -> str:
    """`%fm inspect [STEP]` where widgets cannot be shown: the variables
    after ``step`` (default HEAD)."""
    source = source or Source()
    step = step if step is not None else (source.head or source.last_step())
    rec = source.record(step)
    if rec.state is None:
        return f"step {step} on {rec.branch}: no state recorded ({rec.status})"
    m = source.manifest(step)
    changed = set((rec.state or {}).get("changed") or ())
    n = len(m)
    top = (f"step {step} on {rec.branch}: {n} variable{'s' * (n != 1)}, "
           f"{len(changed & set(m))} changed by it (marked *)")
    if not n:
        return top
    return top + "\n" + variables_text(m, changed)
