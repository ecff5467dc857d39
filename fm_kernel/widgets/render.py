"""Pure helpers behind the widgets: the branch-graph layout, SVG and HTML
fragments (rows, columns, badges, tables) and recorded outputs made fit for
an Output widget. Value previews are in `previews`. No widgets and no
history access here, so all of it is testable without a kernel."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..record.trust import inert_parts
from ..tables import first_line, human_bytes
from .style import (
    BORDER_STRONG, ERR, HEAD_BG, HEAD_FG, HOT_BG, HOT_FG, INFO, LABEL_BG, LABEL_FG, LANES, MUTED,
    OK, WARN, FG,
)

STATUS_COLOURS = {"ok": OK, "error": ERR, "interrupted": WARN, "running": INFO}
BRANCH_PALETTE = LANES
ROW_PX = 26      # height of one timeline row; the graph slices of adjacent rows abut
LANE_PX = 14     # horizontal distance between two lanes of the graph
MAX_LANES = 8    # wider graphs are clipped: beyond this the lanes share the last column
HOT_CLASS = ' class="fm-changed"'  # a table cell that differs from the other step


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def status_colour(status: str | None) -> str:
    return STATUS_COLOURS.get(status or "", MUTED)


def branch_colour(name: str | None, order: dict[str, int] | None = None) -> str:
    """A stable colour per branch: `main` first, others by first appearance."""
    if not name:
        return BRANCH_PALETTE[0]
    if order is not None and name in order:
        return BRANCH_PALETTE[order[name] % len(BRANCH_PALETTE)]
    return BRANCH_PALETTE[sum(name.encode()) % len(BRANCH_PALETTE)]


def duration_text(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


# -- the branch graph ----------------------------------------------------------


@dataclass
class GraphRow:
    """What one row of the graph draws: the node's lane, lines passing by,
    the edge coming in from above and the edges leaving below."""

    step: int
    lane: int
    colour: str
    through: list[tuple[int, str, bool]] = field(default_factory=list)  # (lane, colour, dashed)
    top: tuple[str, bool] | None = None                                  # (colour, dashed)
    out: list[tuple[int, str, bool]] = field(default_factory=list)      # (lane, colour, dashed)


def layout(steps: Sequence[tuple[int, str, int | None]]) -> list[GraphRow]:
    """Lay out steps (step, branch, parent), oldest first, as a git-style graph.

    A step continues its parent's lane when it is the parent's first child on
    the same branch; other children fork into the first free lane, reserved
    from the parent's row down to the child's. A step with no parent (the
    first cell after a clean restart) is drawn joined to the previous step of
    its branch by a dashed edge, so one branch does not fall apart into many.
    Lanes are freed at the last step of a line and reused below it, so the
    width is the number of lines open at once, not the number of branches."""
    present = {s for s, _, _ in steps}
    branch_of = {s: b for s, b, _ in steps}
    order: dict[str, int] = {}
    for _, b, _ in steps:
        order.setdefault(b, len(order))
    parent_of: dict[int, tuple[int, bool]] = {}
    last_on_branch: dict[str, int] = {}
    for s, b, p in steps:
        if p is not None and p in present and p < s:
            parent_of[s] = (p, False)
        elif p is None and b in last_on_branch:
            parent_of[s] = (last_on_branch[b], True)
        last_on_branch[b] = s
    children: dict[int, list[int]] = {}
    for s, _, _ in steps:
        if s in parent_of:
            children.setdefault(parent_of[s][0], []).append(s)

    occupied: dict[int, tuple[int, str, bool]] = {}  # lane -> (awaited step, colour, dashed)

    def free_lane() -> int:
        lane = 0
        while lane in occupied:
            lane += 1
        return lane

    rows: list[GraphRow] = []
    for s, b, _ in steps:
        colour = branch_colour(b, order)
        through = [(ln, c, d) for ln, (w, c, d) in occupied.items() if w != s]
        incoming = [ln for ln, (w, _, _) in occupied.items() if w == s]
        if incoming:
            lane = incoming[0]
            _, c, d = occupied.pop(lane)
            top: tuple[str, bool] | None = (c, d)
        else:
            lane, top = free_lane(), None
        row = GraphRow(s, lane, colour, sorted(through), top)
        kids = sorted(children.get(s, ()),
                      key=lambda k: (parent_of[k][1], branch_of[k] != b, k))
        for i, k in enumerate(kids):
            target = lane if i == 0 else free_lane()
            occupied[target] = (k, branch_colour(branch_of[k], order), parent_of[k][1])
            row.out.append((target, occupied[target][1], parent_of[k][1]))
        rows.append(row)
    return rows


def _x(lane: int) -> float:
    return LANE_PX / 2 + min(lane, MAX_LANES - 1) * LANE_PX


def graph_px(lanes: int) -> int:
    """The graph column's width for ``lanes`` lanes (clipped at MAX_LANES)."""
    return int(min(max(lanes, 1), MAX_LANES) * LANE_PX)


def graph_svg(row: GraphRow, lanes: int, status: str | None, head: bool = False) -> str:
    """One row's slice of the graph as inline SVG, ROW_PX high."""
    width = graph_px(lanes)
    h, mid = ROW_PX, ROW_PX / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
             f'style="display:block" class="fm-graph">']

    def line(x1: float, y1: float, x2: float, y2: float, colour: str, dashed: bool) -> None:
        dash = ' stroke-dasharray="3,3"' if dashed else ""
        parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" style="stroke:{colour}" '
                     f'stroke-width="2"{dash}/>')

    for lane, colour, dashed in row.through:
        line(_x(lane), 0, _x(lane), h, colour, dashed)
    x = _x(row.lane)
    if row.top is not None:
        line(x, 0, x, mid, row.top[0], row.top[1])
    for lane, colour, dashed in row.out:
        if lane == row.lane:
            line(x, mid, x, h, colour, dashed)
        else:
            x2 = _x(lane)
            dash = ' stroke-dasharray="3,3"' if dashed else ""
            parts.append(f'<path d="M {x} {mid} C {x} {h}, {x2} {mid}, {x2} {h}" fill="none" '
                         f'style="stroke:{colour}" stroke-width="2"{dash}/>')
    if head:
        parts.append(f'<circle cx="{x}" cy="{mid}" r="7.5" fill="none" style="stroke:{FG}" '
                     f'stroke-width="1.5"/>')
    parts.append(f'<circle cx="{x}" cy="{mid}" r="5" style="fill:{status_colour(status)};'
                 f'stroke:{row.colour}" stroke-width="1.5"><title>step {row.step}: '
                 f'{esc(status)}</title></circle></svg>')
    return "".join(parts)


def badge(text: str, colour: str = LABEL_BG, fg: str = LABEL_FG) -> str:
    return (f'<span class="fm-tag" style="background:{colour};color:{fg};border-radius:8px;'
            f'padding:0 6px;font-size:11px;margin-left:4px;white-space:nowrap">{esc(text)}</span>')


def col(content: str, width: int | None = None, title: str | None = None,
        style: str = "", cls: str = "") -> str:
    """One column of a row: ``width`` px (None: the rest of the row), never
    wider, narrower only when the row is narrower than its columns (Notebook
    7's page), all columns alike; text that does not fit ends in an ellipsis
    and shows whole in the tooltip (``title``, by default the text itself)."""
    size = f"flex:0 1 {width}px;width:{width}px;" if width else "flex:1 1 0;"
    if title is None:
        title = html.unescape(re.sub(r"<[^>]+>", "", content)).strip()
    tip = f' title="{esc(title)}"' if title else ""
    return (f'<span class="fm-col fm-ellipsis {cls}"{tip} style="{size}white-space:nowrap;'
            f'overflow:hidden;text-overflow:ellipsis;min-width:0;{style}">{content}</span>')


def row_box(columns: str, height: int = ROW_PX, gap: int = 6) -> str:
    """Columns side by side in one line of ``height`` px that clips, never wraps."""
    return (f'<div class="fm-row-text" style="display:flex;align-items:center;gap:{gap}px;'
            f'height:{height}px;line-height:{height}px;font-size:12px;min-width:0;'
            f'overflow:hidden">{columns}</div>')


def row_html(status: str | None, duration_ms: float | None, code: str | None,
             labels: Iterable[str] = (), head: bool = False) -> str:
    """The text part of one timeline row: status, duration, labels, first
    line of code. Status and duration have fixed widths; the labels take at
    most a third of the rest, so a long label list never pushes the code out."""
    tags = "".join(badge(name) for name in labels)
    if head:
        tags = badge("HEAD", HEAD_BG, HEAD_FG) + tags
    names = ", ".join((["HEAD"] if head else []) + list(labels))
    line = first_line(code)
    tag_col = (f'<span class="fm-tags fm-ellipsis" title="{esc(names)}" style="flex:0 1 auto;'
               f'max-width:33%;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;'
               f'min-width:0">{tags}</span>' if tags else "")
    return row_box(
        col(esc(status), 74, style=f"color:{status_colour(status)};font-weight:600")
        + col(esc(duration_text(duration_ms)), 58, style=f"color:{MUTED};text-align:right",
              cls="fm-duration")
        + tag_col
        + col(f'<code style="font-size:12px">{esc(line)}</code>', title=(code or "")[:1000],
              cls="fm-code-line"))


# -- tables and values -----------------------------------------------------------


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]],
               marks: Sequence[Sequence[bool]] | None = None, raw: bool = False) -> str:
    """A compact HTML table; cells whose mark is true are highlighted."""
    th = "".join(f'<th style="text-align:left;padding:2px 8px;border-bottom:1px solid {BORDER_STRONG}">'
                 f'{esc(c)}</th>' for c in columns)
    body = []
    for i, row in enumerate(rows):
        tds = []
        for j, v in enumerate(row):
            hot = bool(marks and marks[i][j])
            style = "padding:2px 8px;white-space:nowrap;" + (f"background:{HOT_BG};color:{HOT_FG};font-weight:600;"
                                          if hot else "")
            tds.append(f'<td{HOT_CLASS if hot else ""} style="{style}">{v if raw else esc(v)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table style="border-collapse:collapse;font-size:12px"><thead><tr>{th}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>')


def size_text(n: int | None) -> str:
    return human_bytes(n) if n is not None else ""


def output_for_widget(out: dict[str, Any]) -> dict[str, Any] | None:
    """A recorded nbformat output made fit for an Output widget's ``outputs``.

    Widget views in old outputs point at models that no longer exist; their
    plain-text fallback is shown instead of an error box."""
    kind = out.get("output_type")
    if kind in ("clear_output",):
        return None
    if kind == "update_display_data":
        kind = "display_data"
    if kind in ("display_data", "execute_result"):
        data = dict(out.get("data") or {})
        data.pop("application/vnd.jupyter.widget-view+json", None)
        if not data:
            return None
        res: dict[str, Any] = {"output_type": kind, "data": data,
                               "metadata": out.get("metadata") or {}}
        if kind == "execute_result":
            res["execution_count"] = out.get("execution_count")
        return res
    if kind == "stream":
        return {"output_type": "stream", "name": out.get("name", "stdout"), "text": out.get("text", "")}
    if kind == "error":
        return {"output_type": "error", "ename": out.get("ename") or "", "evalue": out.get("evalue") or "",
                "traceback": list(out.get("traceback") or [])}
    return None


def outputs_for_widget(outs: Sequence[dict[str, Any]], limit: int = 50,
                       trusted: bool = True) -> tuple[dict[str, Any], ...]:
    """Recorded outputs in order, with clear_output applied as the frontend did.
    Untrusted (a history made elsewhere, not `fm trust`ed): markup and scripts
    are held back, with one line saying so, as `%fm show` does."""
    shown: list[dict[str, Any]] = []
    held: set[str] = set()
    for out in outs:
        if out.get("output_type") == "clear_output":
            shown = []
            continue
        conv = output_for_widget(out)
        if conv is not None and not trusted and "data" in conv:
            conv["data"], parts = inert_parts(conv["data"])
            conv["metadata"] = {}
            held.update(parts)
            if not conv["data"]:
                conv = None
        if conv is not None:
            shown.append(conv)
    if held:
        shown.append({"output_type": "stream", "name": "stdout",
                      "text": f"({', '.join(sorted(held))} not shown: this history is not trusted "
                              "here; `fm trust HISTORY` shows it)\n"})
    if len(shown) > limit:
        more = len(shown) - limit
        shown = shown[:limit] + [{"output_type": "stream", "name": "stdout",
                                  "text": f"… {more} more outputs (`%fm show STEP` prints all)\n"}]
    return tuple(shown)
