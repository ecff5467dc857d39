"""Pure helpers behind the widgets: the branch-graph layout, SVG and HTML
fragments, value previews and DataFrame/array comparisons. No widgets and no
history access here, so all of it is testable without a kernel."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

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
PLOT_LINE = "#1e88e5"  # mid-tone blue: 3:1 or more on white and on #111
PLOT_GREY = "#8a8a8a"  # axes and ticks, readable on both backgrounds
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
    """One column of a row: ``width`` px exactly (None: the rest of the row),
    never wider; text that does not fit ends in an ellipsis and shows whole
    in the tooltip (``title``)."""
    size = f"flex:0 0 {width}px;width:{width}px;" if width else "flex:1 1 0;"
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
            style = "padding:2px 8px;" + (f"background:{HOT_BG};color:{HOT_FG};font-weight:600;"
                                          if hot else "")
            tds.append(f'<td{HOT_CLASS if hot else ""} style="{style}">{v if raw else esc(v)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table style="border-collapse:collapse;font-size:12px"><thead><tr>{th}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>')


def _cell(v: Any, width: int = 40) -> str:
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_frame(v: Any) -> bool:
    return type(v).__name__ == "DataFrame" and hasattr(v, "iloc") and hasattr(v, "columns")


def _is_array(v: Any) -> bool:
    return type(v).__name__ == "ndarray" and hasattr(v, "dtype") and hasattr(v, "shape")


def frame_cell_mask(a: Any, b: Any):
    """Boolean DataFrame of cells that differ (NaN == NaN), or None when the two
    frames do not line up (shape, columns or index differ)."""
    if not (_is_frame(a) and _is_frame(b)) or a.shape != b.shape:
        return None
    if list(a.columns) != list(b.columns) or not a.index.equals(b.index):
        return None
    try:
        neq = a.ne(b) & ~(a.isna() & b.isna())
    except Exception:  # unorderable or odd dtypes: compare as text
        neq = a.astype(str).ne(b.astype(str))
    return neq


def frame_html(df: Any, rows: int = 10, mask: Any = None, only_changed: bool = False) -> str:
    """Shape, dtypes and the first rows of a DataFrame (or the changed rows)."""
    n_rows, n_cols = df.shape
    head = f"<b>DataFrame</b> · {n_rows:,} rows × {n_cols:,} columns"
    shown = df
    marks = None
    note = f"first {min(rows, n_rows)} rows"
    if mask is not None:
        changed_rows = mask.any(axis=1)
        if only_changed and changed_rows.any():
            shown = df[changed_rows.values]
            mask = mask[changed_rows.values]
            note = f"{min(rows, len(shown))} of {int(changed_rows.sum())} changed rows"
        marks = mask.iloc[:rows].values.tolist()
    cols = ["", *[str(c) for c in shown.columns[:20]]]
    body = []
    # itertuples keeps each column's own type (iterrows would make ints floats)
    for idx, r in zip(shown.index[:rows], shown.iloc[:rows, :20].itertuples(index=False, name=None)):
        body.append([_cell(idx), *[_cell(v) for v in r]])
    if marks is not None:
        marks = [[False, *m[:20]] for m in marks]
    dtypes = ", ".join(f"{c}: {t}" for c, t in list(df.dtypes.astype(str).items())[:12])
    more = " …" if n_cols > 12 else ""
    return (f'<div style="font-size:12px">{head} <span style="color:{MUTED}">({note})</span>'
            f'</div>{table_html(cols, body, marks)}'
            f'<div style="color:{MUTED};font-size:11px">{esc(dtypes)}{more}</div>')


def array_stats(a: Any) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"shape": tuple(a.shape), "dtype": str(a.dtype)}
    if a.size and np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating):
        f = a.astype(float, copy=False)
        finite = f[np.isfinite(f)]
        out["nan"] = int(np.isnan(f).sum())
        if finite.size:
            out.update(min=float(finite.min()), max=float(finite.max()),
                       mean=float(finite.mean()), std=float(finite.std()))
    return out


def array_plot_png(a: Any, width_in: float = 4.0, height_in: float = 2.2) -> bytes | None:
    """A small PNG of a numeric 1-D (line) or 2-D (image) array, or None.

    Drawn on a bare Figure with the Agg canvas, not pyplot: pyplot would hand
    the figure to the inline backend, which would show it as cell output."""
    import numpy as np

    if a.ndim not in (1, 2) or not a.size or not np.issubdtype(a.dtype, np.number):
        return None
    if np.issubdtype(a.dtype, np.complexfloating):
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    # Transparent, with mid-grey axes and a mid-tone line: one picture that
    # reads on a light and on a dark notebook background alike.
    fig = Figure(figsize=(width_in, height_in), dpi=80, facecolor="none")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1, facecolor="none")
    colorbar = None
    if a.ndim == 1:
        step = max(1, a.size // 2000)  # a plot wider than its pixels shows nothing more
        xs = np.arange(0, a.size, step)
        ax.plot(xs, a[::step].astype(float), linewidth=1, color=PLOT_LINE)
    else:
        sy, sx = max(1, a.shape[0] // 400), max(1, a.shape[1] // 400)
        im = ax.imshow(a[::sy, ::sx].astype(float), aspect="auto", interpolation="nearest")
        colorbar = fig.colorbar(im, ax=ax)
    for axis in (ax, colorbar.ax if colorbar is not None else None):
        if axis is not None:
            axis.tick_params(labelsize=7, colors=PLOT_GREY)
            for spine in axis.spines.values():
                spine.set_color(PLOT_GREY)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", transparent=True)
    return buf.getvalue()


def array_html(a: Any, plot: bool = True, other: Any = None) -> str:
    st = array_stats(a)
    bits = [f"<b>ndarray</b> · shape {st['shape']} · dtype {esc(st['dtype'])}"]
    if "min" in st:
        bits.append(f"min {st['min']:.4g} · max {st['max']:.4g} · mean {st['mean']:.4g} · "
                    f"std {st['std']:.4g}" + (f" · {st['nan']} NaN" if st.get("nan") else ""))
    if other is not None and _is_array(other) and other.shape == a.shape:
        import numpy as np

        try:
            differ = ~((a == other) | (_isnan(a) & _isnan(other)))
            bits.append(f"{int(np.count_nonzero(differ)):,} of {a.size:,} elements differ")
        except (TypeError, ValueError):  # structured or object dtypes: no element count
            pass
    out = "".join(f'<div style="font-size:12px">{b}</div>' for b in bits)
    png = array_plot_png(a) if plot else None
    if png:
        out += f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
    return out


def _isnan(a: Any):
    import numpy as np

    try:
        return np.isnan(a)
    except TypeError:
        return np.zeros(a.shape, dtype=bool)


def pre_html(v: Any, limit: int = 3000) -> str:
    try:
        text = repr(v)
    except Exception as exc:  # a broken __repr__ must not break the inspector
        text = f"<repr failed: {exc!r}>"
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text):,} characters)"
    return (f'<pre style="font-size:12px;white-space:pre-wrap;max-height:300px;overflow:auto;'
            f'margin:2px 0">{esc(text)}</pre>')


def repr_html(v: Any, limit: int = 3000) -> str:
    return f'<div style="font-size:12px"><b>{esc(type(v).__name__)}</b></div>' + pre_html(v, limit)


def value_html(v: Any, other: Any = None, mark_changes: bool = False) -> str:
    """A preview of one value; with ``other`` (the same name at another step)
    and mark_changes, cells that differ from it are highlighted."""
    if _is_frame(v):
        mask = frame_cell_mask(v, other) if mark_changes and other is not None else None
        return frame_html(v, mask=mask, only_changed=mask is not None)
    if _is_array(v):
        return array_html(v, other=other if mark_changes else None)
    if type(v).__name__ == "Series" and hasattr(v, "to_frame"):
        return (f'<div style="font-size:12px"><b>Series</b> {esc(v.name)} · {len(v):,} values · '
                f'dtype {esc(v.dtype)}</div>' + pre_html(v.head(10)))
    return repr_html(v)


def frame_change_counts(a: Any, b: Any) -> dict[str, int] | None:
    """How a DataFrame changed from a to b: rows and columns added, removed and
    changed (rows matched by index label, columns by name). None if either is
    not a DataFrame."""
    if not (_is_frame(a) and _is_frame(b)):
        return None
    ca, cb = list(a.columns), list(b.columns)
    common = [c for c in ca if c in set(cb)]
    counts = {"columns_added": len([c for c in cb if c not in set(ca)]),
              "columns_removed": len([c for c in ca if c not in set(cb)])}
    if a.index.is_unique and b.index.is_unique:
        ia, ib = a.index, b.index
        shared = ia.intersection(ib, sort=False)
        counts["rows_added"] = int(len(ib.difference(ia, sort=False)))
        counts["rows_removed"] = int(len(ia.difference(ib, sort=False)))
        left, right = a.loc[shared, common], b.loc[shared, common]
    else:  # duplicate labels: compare by position over the common length
        n = min(len(a), len(b))
        counts["rows_added"], counts["rows_removed"] = max(0, len(b) - n), max(0, len(a) - n)
        left = a.iloc[:n][common].reset_index(drop=True)
        right = b.iloc[:n][common].reset_index(drop=True)
    mask = frame_cell_mask(left, right)
    if mask is None:
        counts["rows_changed"] = counts["columns_changed"] = 0
    else:
        counts["rows_changed"] = int(mask.any(axis=1).sum())
        counts["columns_changed"] = int(mask.any(axis=0).sum())
    counts["cells_changed"] = int(mask.values.sum()) if mask is not None else 0
    return counts


def _count(n: int, noun: str, verb: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'} {verb}"


def describe_frame_change(c: dict[str, int]) -> str:
    parts = [_count(c["rows_changed"], "row", "changed"),
             _count(c["columns_changed"], "column", "changed")]
    for key in ("rows_added", "rows_removed", "columns_added", "columns_removed"):
        if c.get(key):
            noun, verb = key.split("_")
            parts.append(_count(c[key], noun[:-1], verb))
    return ", ".join(parts)


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


def outputs_for_widget(outs: Sequence[dict[str, Any]], limit: int = 50) -> tuple[dict[str, Any], ...]:
    """Recorded outputs in order, with clear_output applied as the frontend did."""
    shown: list[dict[str, Any]] = []
    for out in outs:
        if out.get("output_type") == "clear_output":
            shown = []
            continue
        conv = output_for_widget(out)
        if conv is not None:
            shown.append(conv)
    if len(shown) > limit:
        more = len(shown) - limit
        shown = shown[:limit] + [{"output_type": "stream", "name": "stdout",
                                  "text": f"… {more} more outputs (`%fm show STEP` prints all)\n"}]
    return tuple(shown)
