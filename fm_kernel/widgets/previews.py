"""Previews of past values (DataFrames, arrays, Series, anything else) and
DataFrame comparisons, as HTML. Pure: no widgets, no history access."""

from __future__ import annotations

import base64
import io
from typing import Any

from .render import esc, table_html
from .style import MUTED

__all__ = ["array_html", "array_plot_png", "array_stats", "describe_frame_change",
           "frame_cell_mask", "frame_change_counts", "frame_html", "str_html", "value_html"]

PLOT_LINE = "#1e88e5"  # mid-tone blue: 3:1 or more on white and on #111
PLOT_GREY = "#8a8a8a"  # axes and ticks, readable on both backgrounds


def _cell(v: Any, width: int = 40) -> str:
    # a string as a person reads it (Lima, not 'Lima'); the dtype line says it is text
    text = str(v)
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


def str_html(v: str, limit: int = 3000) -> str:
    """A string as its text, not its repr: no quotes, newlines as lines."""
    text = v if len(v) <= limit else v[:limit] + f"… ({len(v):,} characters)"
    return (f'<div style="font-size:12px"><b>{esc(type(v).__name__)}</b> · {len(v):,} '
            f'character{"s" * (len(v) != 1)}</div>'
            f'<pre class="fm-str" style="font-size:12px;white-space:pre-wrap;max-height:300px;'
            f'overflow:auto;margin:2px 0">{esc(text)}</pre>')


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
    if isinstance(v, str):
        return str_html(v)
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
        counts["by_position"] = 0
        counts["rows_added"] = int(len(ib.difference(ia, sort=False)))
        counts["rows_removed"] = int(len(ia.difference(ib, sort=False)))
        left, right = a.loc[shared, common], b.loc[shared, common]
    else:  # duplicate labels: compare by position over the common length
        n = min(len(a), len(b))
        counts["by_position"] = 1
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
    if not counts["by_position"] and (counts["rows_added"] or counts["rows_removed"]):
        # labels differ (a reset_index, a sort, rows dropped): pairing rows by
        # position may be what the user means, so count that way too
        n = min(len(a), len(b))
        pos = frame_cell_mask(a.iloc[:n][common].reset_index(drop=True),
                              b.iloc[:n][common].reset_index(drop=True))
        counts["rows_changed_by_position"] = int(pos.any(axis=1).sum()) if pos is not None else 0
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
    how = "by position (the index has repeated labels)" if c.get("by_position") else \
        "by index label"
    text = ", ".join(parts) + f" (rows matched {how})"
    if "rows_changed_by_position" in c:
        by_pos = _count(c["rows_changed_by_position"], "row", "changed")
        text += f"; matched by position instead: {by_pos}"
    return text
