"""Plain-text tables for magics and the CLI: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence


def cell_text(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.1f}"
    elif isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    else:
        text = str(value)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 60) -> str:
    cells = [[cell_text(v, width) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()
    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def first_line(code: str | None) -> str:
    for ln in (code or "").splitlines():
        if ln.strip():
            return ln.strip()
    return ""


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def step_log_table(rows: Sequence[Sequence[Any]], head: int | None = None,
                   sessions: Sequence[tuple[int, str]] = ()) -> str:
    """The step log as `%fm log` and `fm log` print it: ``rows`` are (step,
    branch, parent, status, execution count, ms, code); HEAD's step is
    starred; ``sessions`` (number, start) per row puts a line where a new
    kernel session began (and above the first row when that is not the
    first session)."""
    cells = [(("*" if r[0] == head else "") + str(r[0]), r[1], "" if r[2] is None else r[2], r[3],
              "" if r[4] is None else f"[{r[4]}]", f"{r[5]:.0f} ms" if r[5] is not None else "",
              first_line(r[6])) for r in rows]
    out = format_table(["step", "branch", "parent", "status", "in", "duration", "code"],
                       cells).split("\n")
    if not sessions:
        return "\n".join(out)
    body, last = out[:2], 1
    for line, (n, began) in zip(out[2:], sessions):
        if n != last:
            body.append(f"-- kernel session {n}" + (f", started {began}" if began else "") + " --")
            last = n
        body.append(line)
    return "\n".join(body)


def branch_table_text(rows: Sequence[Sequence[Any]], current: str | None = None) -> str:
    """`%fm branches` / `fm branches`: (name, head, base, created) rows; the
    current branch starred. base is the step the branch forked from."""
    cells = [(("* " if r[0] == current else "  ") + r[0], "" if r[1] is None else r[1],
              "" if r[2] is None else r[2], r[3]) for r in rows]
    return format_table(["branch", "head", "base", "created"], cells)
