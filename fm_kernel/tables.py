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


def step_log_table(rows: Sequence[Sequence[Any]], head: int | None = None) -> str:
    """The step log as `%fm log` and `fm log` print it; ``rows`` in the
    column order of ``Store.steps()``; HEAD's step is starred."""
    cells = [(("*" if r[0] == head else "") + str(r[0]), r[1], r[2] or "", r[3],
              f"{r[5]:.0f} ms" if r[5] is not None else "", first_line(r[7])) for r in rows]
    return format_table(["step", "branch", "parent", "status", "duration", "code"], cells)
