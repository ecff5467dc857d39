"""The state inspector and the diff view. Both read past states through
`Source` (store, timeline, `api.History.state`) and never touch the live
namespace: values are loaded as copies, and only when a name is clicked."""

from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W

from .. import errors
from ..tables import format_table
from ..state.states import diff
from .busy import Busy
from .base import message_html, pager_buttons, section, themed, with_text
from .loader import load
from .source import Source
from .style import BG, ERR, MUTED, OK, WARN, dot
from .variables import natural_key
from .text import variables_text
from .previews import describe_frame_change, frame_change_counts, value_html
from .render import badge, col, esc, row_box, size_text, table_html

SORT_KEYS = ("name", "type", "size", "changed", "summary")
COLUMN_WIDTHS = {"name": "150px", "type": "150px", "size": "80px", "changed": "84px"}
VAR_ROW_PX = 24
MAX_ROWS = 60            # variables on one page of the table
DIFF_LOAD_LIMIT = 64 << 20  # DataFrames compared cell by cell in a diff up to this size


def variable_row_html(e: Any, changed: bool) -> str:
    """A variable's row after its name button, in the header's column widths."""
    return row_box(
        col(esc(e.type), _px("type"), title=e.type, style="padding-left:4px")
        + col(esc(size_text(e.size_bytes)), _px("size"), style="text-align:right;padding-right:8px")
        + col(dot(WARN) if changed else "", _px("changed"), style="text-align:center")
        + col(esc(e.summary), title=e.summary),
        height=VAR_ROW_PX, gap=0)


def _px(column: str) -> int:
    return int(COLUMN_WIDTHS[column].removesuffix("px"))


def _value_title(name: str, step: int) -> str:
    return f'<div style="font-size:12px"><b>{esc(name)}</b> after step {step}</div>'


def _is_frame_type(type_name: str) -> bool:
    return type_name.rsplit(".", 1)[-1] == "DataFrame"


class InspectWidget(W.VBox):
    """Variables of one step as a sortable table; a clicked variable's value
    as it was, and the same variable at a second step beside it."""

    def __init__(self, source: Source | None = None, step: int | None = None,
                 compare: int | None = None):
        super().__init__()
        self.add_class("fm-inspector")
        self.source = source or Source()
        last = max(self.source.last_step(), 1)
        step = step if step is not None else (self.source.head or last)
        self.sort_key, self.descending = "name", False
        self.page = 0
        self.selected_name: str | None = None
        self._token: object = None  # the load the value panes wait for
        self._states: dict[int, Any] = {}
        self._manifest: Any = {}
        self._changed: set[str] = set()
        self._row_pool: list[tuple[W.HBox, W.Button, W.HTML]] = []
        # a value load disables no button: a later click on a name supersedes it
        self.busy = Busy(self, lambda: ())
        self.children = [self._build_controls(step, last, compare), self.busy.note,
                         self._build_header(), self.table, section("Value"), *self._build_values()]
        themed(self)
        self.step = step
        self.compare = compare
        self._load(step)

    def _build_controls(self, step: int, last: int, compare: int | None) -> W.HBox:
        self.step_picker = W.BoundedIntText(value=step, min=1, max=max(last, step),
                                            description="step", continuous_update=False,
                                            layout=W.Layout(width="140px"),
                                            style={"description_width": "36px"})
        self.compare_picker = W.IntText(value=compare or 0, description="compare with step",
                                        continuous_update=False, layout=W.Layout(width="230px"),
                                        style={"description_width": "140px"},
                                        tooltip="0: no comparison")
        self.filter = W.Text(placeholder="filter names", continuous_update=True,
                             layout=W.Layout(width="160px"))
        self.step_picker.add_class("fm-inspect-step")
        self.compare_picker.add_class("fm-inspect-compare")
        self.step_picker.observe(lambda c: self.set_step(c["new"]), names="value")
        self.compare_picker.observe(lambda c: self.set_compare(c["new"] or None), names="value")
        self.filter.observe(lambda _c: self._render_table(page=0), names="value")
        self.prev_button, self.next_button = pager_buttons("fm-inspect")
        self.prev_button.on_click(lambda _b: self._render_table(page=self.page - 1))
        self.next_button.on_click(lambda _b: self._render_table(page=self.page + 1))
        self.page_label = W.HTML()
        self.info = W.HTML()
        return W.HBox([self.step_picker, self.compare_picker, self.filter, self.prev_button,
                       self.page_label, self.next_button, self.info],
                      layout=W.Layout(flex_flow="row wrap", align_items="center"))

    def _build_header(self) -> W.HBox:
        self.table = W.VBox(layout=W.Layout(max_height="360px", overflow="auto", width="100%"))
        self.sort_buttons = {}
        for key in SORT_KEYS:
            b = W.Button(description=key, tooltip=f"sort by {key}",
                         layout=W.Layout(width=COLUMN_WIDTHS.get(key, "auto"),
                                         flex="0 0 auto" if key in COLUMN_WIDTHS else "1 1 auto",
                                         height="24px", margin="0"))
            b.add_class(f"fm-sort-{key}")
            b.on_click(lambda _b, k=key: self.sort_by(k))
            self.sort_buttons[key] = b
        return W.HBox([self.sort_buttons[k] for k in SORT_KEYS], layout=W.Layout(width="100%"))

    def _build_values(self) -> tuple[W.HTML, W.HBox]:
        self.badge = W.HTML()
        self.badge.add_class("fm-badge")
        self.left_title, self.right_title = W.HTML(), W.HTML()
        self.left = W.HTML()
        self.right = W.HTML()
        self.left.add_class("fm-value-left")
        self.right.add_class("fm-value-right")
        self.values = W.HBox([W.VBox([self.left_title, self.left], layout=W.Layout(flex="1 1 0", min_width="0")),
                              W.VBox([self.right_title, self.right], layout=W.Layout(flex="1 1 0", min_width="0", padding="0 0 0 12px"))],
                             layout=W.Layout(width="100%"))
        return self.badge, self.values

    # -- public ----------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Show the variables after ``step`` (the selected name stays, if present)."""
        if step == self.step and self._manifest:
            return
        self.step = step
        if self.step_picker.value != step:
            self.step_picker.max = max(self.step_picker.max, step)
            self.step_picker.value = step
        self._load(step)

    def set_compare(self, step: int | None) -> None:
        """Show the selected variable at ``step`` too, beside the first (None: off)."""
        self.compare = step or None
        if (self.compare_picker.value or None) != self.compare:
            self.compare_picker.value = self.compare or 0
        if self.selected_name is not None:
            self.show(self.selected_name)

    def sort_by(self, key: str, descending: bool | None = None) -> None:
        if key not in SORT_KEYS:
            raise errors.UsageError(f"cannot sort by {key!r}; one of: {', '.join(SORT_KEYS)}")
        if descending is None:
            descending = (not self.descending) if key == self.sort_key else key in ("size", "changed")
        self.sort_key, self.descending = key, descending
        self._render_table()

    def names(self) -> list[str]:
        """Variable names in the order the table shows them."""
        m, changed = self._manifest, self._changed
        keys = {
            "name": natural_key,
            "type": lambda n: (m[n].type, natural_key(n)),
            "size": lambda n: (m[n].size_bytes or 0, natural_key(n)),
            "changed": lambda n: (n in changed, natural_key(n)),
            "summary": lambda n: (m[n].summary, natural_key(n)),
        }
        return sorted(m, key=keys[self.sort_key], reverse=self.descending)

    def show(self, name: str) -> None:
        """Show ``name`` as it was after the step (and the compare step).

        From a click the values load on the loader thread and appear when
        ready, so the cell queued behind the click never waits for them;
        called in a cell, this returns once they are shown."""
        self.selected_name = name
        for _box, button, _html in self._row_pool:
            button.button_style = "info" if button.description == name else ""
        step, other = self.step, self.compare
        self.left_title.value = _value_title(name, step)
        self.right_title.value = _value_title(name, other) if other else ""
        self.badge.value = self._badge(name, other)
        # the step records come from DuckDB, which stays on this thread
        states = [self._state_or_error(s) for s in ((step, other) if other else (step,))]
        self._token = token = object()
        self.left.value = message_html(f"loading {name} after step {step} …")
        self.right.value = message_html("loading …") if other else ""
        self.busy.start(f"loading {name} after step {step}")
        load(lambda: self._values_html(name, step, other, states), self._put_values,
             wanted=lambda: self._token is token)

    def _values_html(self, name: str, step: int, other: int | None,
                     states: list[Any]) -> tuple[str, str]:
        a = self._value(states[0], step, name)
        b = self._value(states[1], other, name) if other else None
        equal_shape = b is not None and a[0] and b[0]
        left = (value_html(a[1], b[1] if equal_shape else None, mark_changes=bool(equal_shape))
                if a[0] else message_html(a[1], ok=False))
        if b is None:
            return left, ""
        right = (value_html(b[1], a[1] if equal_shape else None, mark_changes=bool(equal_shape))
                 if b[0] else message_html(b[1], ok=False))
        return left, right

    def _put_values(self, ok: bool, result: Any) -> None:
        self.busy.stop()
        if ok:
            self.left.value, self.right.value = result
        else:  # value_html itself failed: say so instead of leaving "loading"
            self.left.value = message_html(f"cannot show {self.selected_name!r}: "
                                       f"{type(result).__name__}: {result}", ok=False)
            self.right.value = ""

    def text(self) -> str:
        """The variables table, as `%fm inspect` prints it where widgets cannot be shown."""
        return (f"{len(self._manifest)} variables after step {self.step}\n"
                + variables_text(self._manifest, self._changed))

    def _repr_mimebundle_(self, **kwargs: Any):
        return with_text(super()._repr_mimebundle_(**kwargs), self.text())

    # -- internals ---------------------------------------------------------------------

    def _load(self, step: int) -> None:
        try:
            rec = self.source.record(step)
            self._manifest = self.source.manifest(step)
            self._changed = set((rec.state or {}).get("changed") or ())
            self.info.value = (f'<span style="font-size:12px;margin-left:8px">{len(self._manifest)} '
                               f'variables after step {step} on {esc(rec.branch)}; '
                               f'{len(self._changed)} changed by it</span>')
        except errors.FlowmetalError as exc:
            self._manifest, self._changed = {}, set()
            self.info.value = message_html(str(exc), ok=False)
        self._render_table()
        if self.selected_name in self._manifest:
            self.show(self.selected_name)
        else:
            self.selected_name, self._token = None, None
            self.busy.stop()  # a load still running is no longer wanted
            self.badge.value = self.left.value = self.right.value = ""
            self.left_title.value = self.right_title.value = ""

    def _render_table(self, page: int | None = None) -> None:
        """Show one page of the (filtered, sorted) names; ``page`` None keeps the page."""
        for key, b in self.sort_buttons.items():
            arrow = (" ▼" if self.descending else " ▲") if key == self.sort_key else ""
            b.description = key + arrow
        text = (self.filter.value or "").lower()
        names = [n for n in self.names() if text in n.lower()]
        pages = max(1, -(-len(names) // MAX_ROWS))
        self.page = max(0, min(self.page if page is None else page, pages - 1))
        start = self.page * MAX_ROWS
        shown = names[start:start + MAX_ROWS]
        while len(self._row_pool) < len(shown):
            self._row_pool.append(self._make_row())
        m, changed = self._manifest, self._changed
        for (box, button, html), name in zip(self._row_pool, shown):
            button.description = name
            button.button_style = "info" if name == self.selected_name else ""
            button._dom_classes = ("fm-var", f"fm-var-{name}")
            button.tooltip = name
            html.value = variable_row_html(m[name], name in changed)
        rows = [box for box, _, _ in self._row_pool[:len(shown)]]
        if not names:
            rows.append(W.HTML(f'<div style="font-size:12px;color:{MUTED}">no variables</div>'))
        label = f"{start + 1:,}–{start + len(shown):,} of {len(names):,}" if names else "0 of 0"
        self.page_label.value = f'<span style="font-size:12px;padding:0 6px">{label}</span>'
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= pages - 1
        self.table.children = rows

    def _make_row(self) -> tuple[W.HBox, W.Button, W.HTML]:
        width = COLUMN_WIDTHS["name"]
        button = W.Button(layout=W.Layout(width=width, flex=f"0 0 {width}", height=f"{VAR_ROW_PX}px",
                                          margin="0", padding="0 4px"))
        button.on_click(lambda b: self.show(b.description))
        html = W.HTML(layout=W.Layout(flex="1 1 0", margin="0", min_width="0", overflow="hidden"))
        box = W.HBox([button, html], layout=W.Layout(width="100%", margin="0",
                                                     height=f"{VAR_ROW_PX}px",
                                                     align_items="center", overflow="hidden"))
        return box, button, html

    def _state_or_error(self, step: int) -> Any:
        """The lazy past state of ``step`` (cached), or the error naming why not."""
        if step not in self._states:
            try:
                self._states[step] = self.source.state(step)
            except errors.FlowmetalError as exc:
                return exc
        return self._states[step]

    @staticmethod
    def _value(state: Any, step: int, name: str) -> tuple[bool, Any]:
        if isinstance(state, Exception):
            return False, str(state)
        try:
            if name not in state:
                return False, f"{name!r} does not exist after step {step}"
            return True, state[name]
        except errors.FlowmetalError as exc:
            return False, str(exc)
        except Exception as exc:  # an object that cannot be loaded must not break the view
            return False, f"cannot load {name!r} after step {step}: {type(exc).__name__}: {exc}"

    def _badge(self, name: str, other: int | None) -> str:
        if not other:
            return ""
        try:
            mo = self.source.manifest(other)
        except errors.FlowmetalError as exc:
            return badge(str(exc))
        if name not in mo:
            return badge(f"absent after step {other}")
        a, b = self._manifest[name], mo[name]
        if (a.ref, a.fp) == (b.ref, b.fp) or (a.fp and a.fp == b.fp):
            return badge("equal", OK, BG)
        return badge("differs", WARN, BG) + (
            f'<span style="font-size:11px;color:{MUTED};margin-left:6px">changed cells highlighted'
            '</span>' if _is_frame_type(a.type) else "")


def _count_changes(sa: Any, sb: Any, name: str) -> dict[str, int] | str | None:
    """Rows/columns changed in DataFrame ``name`` between two past states, or
    why they could not be compared."""
    try:
        return frame_change_counts(sa[name], sb[name])
    except Exception as exc:
        return f"not compared: {exc}"


class DiffWidget(W.VBox):
    """Names added, removed and changed between two steps; for DataFrames,
    how many rows and columns changed. ``result`` holds the same as data."""

    def __init__(self, source: Source | None, a: int, b: int, load_limit: int = DIFF_LOAD_LIMIT,
                 on_done: Callable[[], None] | None = None):
        super().__init__()
        self.on_done = on_done  # called once the DataFrames are compared (a busy state ends)
        self.add_class("fm-diff-view")
        self.source = source or Source()
        self.a, self.b = a, b
        ma, mb = self.source.manifest(a), self.source.manifest(b)
        self.result = diff(ma, mb)
        self.frame_changes: dict[str, dict[str, int]] = {}
        self.notes: dict[str, str] = {}
        compare = []
        for name, _before, _after in self.result["changed"]:
            ea, eb = ma[name], mb[name]
            if not (_is_frame_type(ea.type) and _is_frame_type(eb.type)):
                continue
            if max(ea.size_bytes or 0, eb.size_bytes or 0) > load_limit:
                self.notes[name] = f"too large to compare here ({size_text(max(ea.size_bytes, eb.size_bytes))})"
                continue
            compare.append(name)
            self.notes[name] = "comparing …"
        self.html = W.HTML()
        self.children = [self.html]
        themed(self)
        self._render()
        self.pending = bool(compare)
        if compare:
            # the step records come from DuckDB, which stays on this thread
            sa, sb = self.source.state(a), self.source.state(b)
            load(lambda: {n: _count_changes(sa, sb, n) for n in compare}, self._compared)

    def _compared(self, ok: bool, result: Any) -> None:
        try:
            self._take_counts(ok, result)
        finally:
            self.pending = False
            if self.on_done is not None:
                self.on_done()

    def _take_counts(self, ok: bool, result: Any) -> None:
        for name, counts in (result.items() if ok else ()):
            if isinstance(counts, str):
                self.notes[name] = counts
            elif counts is not None:
                self.frame_changes[name] = counts
                self.notes[name] = describe_frame_change(counts)
            else:
                self.notes.pop(name, None)
        if not ok:
            self.notes = {n: (f"not compared: {result}" if v == "comparing …" else v)
                          for n, v in self.notes.items()}
        self._render()

    def _render(self) -> None:
        a, b = self.a, self.b
        colours = {"added": OK, "removed": ERR, "changed": WARN}
        rows = [(badge(kind, colours[kind], BG), f"<b>{esc(name)}</b>", esc(before), esc(after),
                 esc(self.notes.get(name, "")))
                for kind in ("added", "removed", "changed") for name, before, after in self.result[kind]]
        counts = ", ".join(f"{len(self.result[k])} {k}" for k in ("added", "removed", "changed"))
        head = (f'<div style="font-size:12px;margin:2px 0">step {a} → step {b}: {counts}</div>')
        body = (table_html(["", "name", f"after step {a}", f"after step {b}", "detail"], rows, raw=True)
                if rows else f'<div style="font-size:12px;color:{MUTED}">no differences</div>')
        self.html.value = head + body

    def text(self) -> str:
        """The plain-text table, as `%fm diff` prints it."""
        frames = getattr(self, "frame_changes", {})
        rows = [(kind, name, before, after) for kind in ("added", "removed", "changed")
                for name, before, after in self.result[kind]]
        if not rows:
            return f"no differences between step {self.a} and step {self.b}"
        columns = ["", "name", f"after step {self.a}", f"after step {self.b}"]
        if frames:  # the DataFrame counts as a fifth column, only when there are some
            columns.append("detail")
            rows = [(*r, describe_frame_change(frames[r[1]]) if r[1] in frames else "") for r in rows]
        return format_table(columns, rows, width=70)

    def _repr_mimebundle_(self, **kwargs: Any):
        # Frontends without widgets (consoles, nbconvert, `fm run`) show the table.
        return with_text(super()._repr_mimebundle_(**kwargs), self.text())
