"""Time-travel widgets (ipywidgets 8): the timeline, the state inspector and
the diff view behind `%fm timeline`, `%fm inspect [STEP]` and `%fm diff A B`.

    from fm_kernel.widgets import timeline_widget, inspect_widget, diff_widget
    timeline_widget()          # steps, branch graph, outputs, Rewind/Fork/Diff
    inspect_widget(12)         # variables after step 12, values side by side
    diff_widget(3, 7)          # names added/removed/changed, DataFrame change counts

Everything is read through `Source`, a thin object over the runtime's Store,
States and `api.History`; nothing here writes SQL. The live namespace
changes only through buttons that say so (Rewind here, Fork here), which call
`navigate` exactly as the magics do.

Widgets read lazily: a page of 50 steps at a time, a step's record and
variable list on click, a variable's value only when its name is clicked.
Callbacks run on the kernel's main thread between cells, never inside one,
and update widgets through comm messages only: nothing they do is recorded
as a cell output. Values and DataFrame comparisons load on a loader thread
(widgets_loader), so a click never holds up the next queued cell.

Hook for more panels (the flow-runs view is not built here): another module
calls ``register_panel("Flow runs", factory)`` where ``factory(source)``
returns a widget; the timeline shows it in a collapsed section, built the
first time it is opened.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import ipywidgets as W

from .. import api
from .. import errors
from ..state import navigate
from .. import runtime
from ..record.recorder import unflatten_outputs
from .loader import kernel_loop
from .render import (
    ROW_PX, badge, esc, graph_svg, layout, outputs_for_widget, row_html, size_text,
    status_colour, duration_text, table_html,
)

__all__ = ["timeline_widget", "inspect_widget", "diff_widget", "in_widget_frontend",
           "register_panel", "Source", "TimelineWidget", "with_text"]

PAGE_SIZE = 50
PANELS: dict[str, Callable[["Source"], W.Widget]] = {}


def register_panel(title: str, factory: Callable[["Source"], W.Widget]) -> None:
    """Add a collapsed section to every timeline widget made from now on."""
    PANELS[title] = factory


def in_widget_frontend() -> bool:
    """Whether this kernel was started by a Jupyter server for a notebook
    (JupyterLab, Notebook, VS Code), which renders widgets. Headless runs
    (`fm run`, nbval, nbconvert) and consoles get text instead."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


# -- reading and moving, through the package's API ---------------------------------


@dataclass
class StepRow:
    step: int
    branch: str
    parent: int | None
    status: str
    duration_ms: float | None
    code: str


class Source:
    """The widgets' one door to the history: store, timeline and navigate
    calls for one runtime (the running kernel's by default)."""

    def __init__(self, rt: runtime.Runtime | None = None):
        self.rt = rt if rt is not None else runtime.current()
        self._history: api.History | None = None

    @property
    def store(self):
        return self.rt.require_store()

    @property
    def timeline(self):
        return self.rt.require_states()

    @property
    def head(self) -> int | None:
        return self.rt.head

    @property
    def branch(self) -> str:
        return self.rt.branch

    def steps(self, branch: str | None = None) -> list[StepRow]:
        res = self.store.steps(branch=branch)
        cols = {c: i for i, c in enumerate(res.columns)}
        return [StepRow(r[cols["step"]], r[cols["branch"]], r[cols["parent"]], r[cols["status"]],
                        r[cols["duration_ms"]], r[cols["code"]]) for r in res.rows]

    def record(self, step: int):
        rec = self.store.step(step)
        if rec is None:
            raise errors.NoSuchStep(step)
        return rec

    def last_step(self) -> int:
        return self.store.last_step

    def manifest(self, step: int):
        return self.states.manifest(step)

    def heads(self) -> dict[str, int | None]:
        return self.store.branch_heads()

    def history(self) -> api.History:
        if self._history is None:
            self._history = api.History(self.store, self.rt.frame_path, self.states)
        return self._history

    def state(self, step: int) -> api.PastState:
        return self.history().state(step)

    def rewind(self, step: int) -> str:
        return navigate.rewind(self.rt, step)

    def fork(self, name: str, step: int) -> str:
        return navigate.fork(self.rt, name, step)

    def version(self) -> tuple[Any, ...]:
        """Changes whenever a cell is recorded or HEAD moves."""
        return (self.store.last_step, self.rt.head, self.rt.branch)


def with_text(bundle: Any, text: str) -> Any:
    """A widget's mime bundle with ``text`` as its text/plain: what consoles,
    nbconvert and `fm run` show where widgets cannot be rendered."""
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    if isinstance(data, dict):
        data["text/plain"] = text
    return bundle


def _message(text: str, ok: bool = True) -> str:
    colour = "#2e7d32" if ok else "#c62828"
    return f'<div style="color:{colour};font-size:12px;padding:2px 0">{esc(text)}</div>'


def _section(title: str) -> W.HTML:
    return W.HTML(f'<div style="font-weight:600;font-size:12px;margin-top:6px;'
                  f'border-bottom:1px solid #ddd">{esc(title)}</div>')


# -- refresh after cells: one IPython hook shared by all live widgets ---------------

_LIVE: "weakref.WeakSet[W.Widget]" = weakref.WeakSet()  # each has after_cell()
_HOOKED: set[int] = set()


def follow_cells(widget: W.Widget) -> None:
    """Call ``widget.after_cell()`` after every cell, once its reply is out."""
    _LIVE.add(widget)
    _ensure_hook()


def unfollow_cells(widget: W.Widget) -> None:
    _LIVE.discard(widget)


class LiveView:
    """Mixed into a view that follows cells (follow_cells) and has a text()
    for frontends that cannot show widgets."""

    def close(self) -> None:
        unfollow_cells(self)
        super().close()  # type: ignore[misc]

    def _repr_mimebundle_(self, **kwargs: Any):
        return with_text(super()._repr_mimebundle_(**kwargs), self.text())  # type: ignore[misc,attr-defined]


def _ensure_hook() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None or id(ip) in _HOOKED:
        return
    ip.events.register("post_run_cell", _after_cell)
    _HOOKED.add(id(ip))


def _after_cell(result: Any = None) -> None:
    """post_run_cell runs inside the cell, before its record is committed; so
    only schedule a look for after the reply, on the kernel's loop."""
    if not _LIVE:
        return
    loop = kernel_loop()
    for w in list(_LIVE):
        if loop is None:
            w.after_cell()
        else:
            loop.call_later(0.05, w.after_cell)


# -- the timeline -----------------------------------------------------------------


class _Row:
    """One reusable row of the step list: the step's button, then one HTML
    with the row's slice of the branch graph and the step's text."""

    def __init__(self, on_click: Callable[[int], None], button_layout: W.Layout,
                 info_layout: W.Layout):
        self.step: int | None = None
        # Layouts are shared by all rows: a page is ~150 widgets instead of ~250,
        # which is most of what building the timeline costs.
        self.button = W.Button(layout=button_layout, tooltip="show this step")
        self.info = W.HTML(layout=info_layout)
        self.box = W.HBox([self.button, self.info],
                          layout=W.Layout(height=f"{ROW_PX}px", margin="0", overflow="hidden",
                                          align_items="center"))
        self.button.on_click(lambda _b: self.step is not None and on_click(self.step))

    def show(self, step: int, svg: str, text: str, selected: bool) -> None:
        self.step = step
        self.info.value = (f'<div style="display:flex;align-items:center;height:{ROW_PX}px">'
                           f'<div style="flex:none">{svg}</div>'
                           f'<div style="flex:1 1 auto;min-width:0;padding-left:4px">{text}</div></div>')
        self.button.description = str(step)
        self.button.button_style = "info" if selected else ""
        self.button._dom_classes = ("fm-step-button", f"fm-step-{step}")
        self.box.layout.display = None

    def hide(self) -> None:
        self.step = None
        self.box.layout.display = "none"


class TimelineWidget(LiveView, W.VBox):
    """Steps as a paged list with a branch graph; a selected step's code,
    outputs and variables; Rewind here, Fork here, Diff with HEAD."""

    def __init__(self, source: Source | None = None, all_branches: bool = False,
                 page_size: int = PAGE_SIZE, select: int | None = None):
        super().__init__(layout=W.Layout(width="100%"))
        self.add_class("fm-timeline")
        self.source = source or Source()
        self.page_size = page_size
        self.page = 0
        self.selected: int | None = None
        self._rows_data: list[StepRow] = []
        self._index: dict[int, int] = {}
        self._graph: list[Any] = []
        self._version: tuple[Any, ...] | None = None

        # toolbar
        self.scope = W.ToggleButtons(options=[("this branch", "branch"), ("all branches", "all")],
                                     value="all" if all_branches else "branch",
                                     style={"button_width": "104px"})
        self.prev_button = W.Button(description="◀ older", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="newer ▶", layout=W.Layout(width="80px"))
        self.page_label = W.HTML()
        self.goto = W.Text(placeholder="go to step", continuous_update=False,
                           layout=W.Layout(width="100px"))
        self.head_label = W.HTML()
        self.scope.observe(lambda _c: self._scope_changed(), names="value")
        self.prev_button.on_click(lambda _b: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _b: self.show_page(self.page + 1))
        self.goto.observe(lambda c: self._goto(c["new"]), names="value")
        toolbar = W.HBox([self.scope, self.prev_button, self.page_label, self.next_button,
                          self.goto, self.head_label],
                         layout=W.Layout(flex_flow="row wrap", align_items="center"))

        # step list (left)
        button_layout = W.Layout(width="58px", height=f"{ROW_PX - 2}px",
                                 margin="1px 4px 1px 0", padding="0")
        info_layout = W.Layout(margin="0", height=f"{ROW_PX}px", overflow="hidden",
                               flex="1 1 auto", min_width="0")
        self._row_layouts = (button_layout, info_layout)
        self._rows: list[_Row] = []  # grown to a page's length as needed, then reused
        self.step_list = W.VBox(layout=W.Layout(width="48%", min_width="360px", overflow="hidden"))
        self.step_list.add_class("fm-step-list")

        # details (right)
        self.header = W.HTML()
        self.rewind_button = W.Button(description="Rewind here", icon="undo",
                                      tooltip="make the namespace the state after this step")
        self.fork_button = W.Button(description="Fork here", icon="code-fork",
                                    tooltip="new branch from this step, then switch to it")
        self.diff_button = W.Button(description="Diff with HEAD", icon="exchange")
        self.inspect_button = W.Button(description="Inspect values", icon="search")
        for b, cls in ((self.rewind_button, "fm-rewind"), (self.fork_button, "fm-fork"),
                       (self.diff_button, "fm-diff"), (self.inspect_button, "fm-inspect")):
            b.add_class(cls)
        self.rewind_button.on_click(lambda _b: self.rewind())
        self.fork_button.on_click(lambda _b: self._ask_fork_name())
        self.diff_button.on_click(lambda _b: self.show_diff())
        self.inspect_button.on_click(lambda _b: self.show_inspector())
        self.fork_name = W.Text(placeholder="new branch name", layout=W.Layout(width="180px"))
        self.fork_name.add_class("fm-fork-name")
        self.fork_confirm = W.Button(description="Fork and switch", button_style="warning")
        self.fork_confirm.add_class("fm-fork-confirm")
        self.fork_cancel = W.Button(description="Cancel", layout=W.Layout(width="70px"))
        self.fork_confirm.on_click(lambda _b: self.fork(self.fork_name.value))
        self.fork_cancel.on_click(lambda _b: self._hide_fork())
        self.fork_box = W.HBox([self.fork_name, self.fork_confirm, self.fork_cancel],
                               layout=W.Layout(display="none"))
        self.status = W.HTML()
        self.status.add_class("fm-status")
        self.code = W.HTML()
        self.outputs = W.Output(layout=W.Layout(max_height="320px", overflow="auto"))
        self.outputs.add_class("fm-outputs")
        self.variables = W.HTML()
        self.extra = W.VBox()  # diff or inspector, on demand
        actions = W.HBox([self.rewind_button, self.fork_button, self.diff_button,
                          self.inspect_button], layout=W.Layout(flex_flow="row wrap"))
        self.detail = W.VBox([self.header, actions, self.fork_box, self.status,
                              _section("Code"), self.code, _section("Outputs"), self.outputs,
                              _section("Variables"), self.variables, self.extra],
                             layout=W.Layout(flex="1 1 0", min_width="320px",
                                             padding="0 0 0 12px"))
        self.detail.add_class("fm-detail")
        panels = self._panels()
        body = W.HBox([self.step_list, self.detail],
                      layout=W.Layout(width="100%", align_items="flex-start"))
        self.children = [toolbar, body] + ([panels] if panels is not None else [])

        self.refresh(follow=True)
        target = select if select is not None else (self.source.head or self._last())
        if target is not None:
            self.select(target)
        follow_cells(self)

    # -- public actions (what the buttons do) ----------------------------------------

    @property
    def message(self) -> str:
        """The last result line shown under the buttons (plain text)."""
        import html
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value))

    def select(self, step: int) -> None:
        """Show ``step``: move to its page, load its code, outputs, variables."""
        if step not in self._index:
            if self.scope.value == "branch" and self._exists(step):
                self.scope.value = "all"  # the step is on another branch: show all
            if step not in self._index:
                self.status.value = _message(f"no step {step} in this history", ok=False)
                return
        self.selected = step
        self.show_page(self._index[step] // self.page_size)
        self._load_detail(step)

    def rewind(self, step: int | None = None) -> str:
        """Rewind the live namespace to ``step`` (default: the selected one)."""
        step = step if step is not None else self.selected
        if step is None:
            return self._say("select a step first", ok=False)
        return self._do(lambda: self.source.rewind(step))

    def fork(self, name: str, step: int | None = None) -> str:
        """Create branch ``name`` at ``step`` (default: the selected one) and switch to it."""
        step = step if step is not None else self.selected
        if step is None:
            return self._say("select a step first", ok=False)
        name = (name or "").strip()
        if not name:
            return self._say("type a name for the new branch first", ok=False)
        line = self._do(lambda: self.source.fork(name, step))
        if not line.startswith("error"):
            self._hide_fork()
            self.fork_name.value = ""
        return line

    def show_diff(self, other: int | None = None) -> None:
        """Diff the selected step against ``other`` (default HEAD) below the details."""
        from .inspector import DiffWidget

        other = other if other is not None else self.source.head
        if self.selected is None or other is None:
            self._say("select a step first (and run a cell so HEAD exists)", ok=False)
            return
        try:
            self.extra.children = [_section(f"Diff: step {self.selected} → HEAD (step {other})"),
                                   DiffWidget(self.source, self.selected, other)]
        except errors.FlowmetalError as exc:
            self._say(str(exc), ok=False)

    def show_inspector(self) -> None:
        from .inspector import InspectWidget

        if self.selected is None:
            self._say("select a step first", ok=False)
            return
        try:
            self.extra.children = [_section(f"Values after step {self.selected}"),
                                   InspectWidget(self.source, self.selected)]
        except errors.FlowmetalError as exc:
            self._say(str(exc), ok=False)

    def refresh(self, follow: bool = False) -> None:
        """Reload the step list (cheap: one query, layout in memory)."""
        on_last = self.page >= self._pages() - 1
        branch = None if self.scope.value == "all" else self.source.branch
        self._rows_data = self.source.steps(branch)
        self._index = {r.step: i for i, r in enumerate(self._rows_data)}
        self._graph = layout([(r.step, r.branch, r.parent) for r in self._rows_data])
        self._heads = self.source.heads()
        self._version = self.source.version()
        page = self._pages() - 1 if (follow or on_last) else min(self.page, self._pages() - 1)
        self.show_page(page)
        head = self.source.head
        self.head_label.value = (f'<span style="font-size:12px;margin-left:8px">HEAD: '
                                 f'<b>{esc(self.source.branch)}</b> @ step {head if head else "–"}'
                                 f'</span>')

    def after_cell(self) -> None:
        self.refresh_if_changed(20)

    def refresh_if_changed(self, tries: int = 0) -> None:
        """After a cell: refresh once its record is committed (retried briefly,
        because the hook fires before the kernel writes the record)."""
        try:
            version = self.source.version()
            if version == self._version:
                return
            last = version[0]
            rec = self.source.store.step(last) if last else None
            if (rec is None or rec.status == "running") and tries > 0:
                loop = kernel_loop()
                if loop is not None:
                    loop.call_later(0.1, self.refresh_if_changed, tries - 1)
                    return
            self.refresh()
            if self.selected is not None and self.selected in self._index:
                self._load_detail(self.selected)
        except Exception:  # a refresh must never disturb the notebook
            pass

    def show_page(self, page: int) -> None:
        page = max(0, min(page, self._pages() - 1))
        self.page = page
        start = page * self.page_size
        chunk = self._rows_data[start:start + self.page_size]
        graph = self._graph[start:start + self.page_size]
        lanes = 1 + max([g.lane for g in graph] + [ln for g in graph for ln, _, _ in g.through]
                        + [ln for g in graph for ln, _, _ in g.out] + [0])
        labels: dict[int, list[str]] = {}
        for name, h in sorted(self._heads.items()):
            if h is not None:
                labels.setdefault(h, []).append(name)
        head = self.source.head
        if len(self._rows) < len(chunk):
            self._rows += [_Row(self.select, *self._row_layouts)
                           for _ in range(len(chunk) - len(self._rows))]
            self.step_list.children = [r.box for r in self._rows]
        for row, data, g in zip(self._rows, chunk, graph):
            is_head = data.step == head
            row.show(data.step, graph_svg(g, lanes, data.status, is_head),
                     row_html(data.status, data.duration_ms, data.code,
                              labels.get(data.step, ()), is_head),
                     data.step == self.selected)
        for row in self._rows[len(chunk):]:
            row.hide()
        total = len(self._rows_data)
        self.page_label.value = ('<span style="font-size:12px;padding:0 6px">'
                                 + (f"steps {start + 1:,}–{start + len(chunk):,} of {total:,}"
                                    if total else "no steps yet") + "</span>")
        self.prev_button.disabled = page == 0
        self.next_button.disabled = page >= self._pages() - 1

    def text(self) -> str:
        """What frontends without widgets show instead."""
        n = len(self._rows_data)
        return (f"flowmetal timeline: {n} step{'s' * (n != 1)}, HEAD {self.source.branch} @ step "
                f"{self.source.head} (a widget: open the notebook in JupyterLab or Notebook; "
                f"`%fm log` prints the steps as text)")

    # -- internals ------------------------------------------------------------------

    def _pages(self) -> int:
        return max(1, -(-len(self._rows_data) // self.page_size))

    def _last(self) -> int | None:
        return self._rows_data[-1].step if self._rows_data else None

    def _exists(self, step: int) -> bool:
        try:
            return self.source.store.step(step) is not None
        except errors.FlowmetalError:
            return False

    def _scope_changed(self) -> None:
        self.refresh()
        if self.selected in self._index:
            self.show_page(self._index[self.selected] // self.page_size)

    def _say(self, text: str, ok: bool = True) -> str:
        self.status.value = _message(text, ok)
        return text if ok else f"error: {text}"

    def _do(self, action: Callable[[], str]) -> str:
        try:
            line = action()
        except errors.FlowmetalError as exc:
            return self._say(str(exc), ok=False)
        except Exception as exc:  # report in the widget: a comm callback has no cell
            return self._say(f"{type(exc).__name__}: {exc}", ok=False)
        self.refresh()
        if self.selected is not None:
            self.select(self.selected)
        return self._say(line)

    def _goto(self, text: str) -> None:
        text = (text or "").strip()
        if text.isdigit():
            self.select(int(text))
        elif text:
            self._say(f"{text!r} is not a step number", ok=False)

    def _ask_fork_name(self) -> None:
        if self.selected is None:
            self._say("select a step first", ok=False)
            return
        self.fork_confirm.description = f"Fork from step {self.selected} and switch"
        self.fork_confirm.layout.width = "auto"
        self.fork_box.layout.display = None

    def _hide_fork(self) -> None:
        self.fork_box.layout.display = "none"

    def _load_detail(self, step: int) -> None:
        try:
            rec = self.source.record(step)
        except errors.FlowmetalError as exc:
            self._say(str(exc), ok=False)
            return
        head = self.source.head
        started = rec.started_at.strftime("%Y-%m-%d %H:%M:%S") if rec.started_at else ""
        self.header.value = (
            f'<div style="font-size:13px"><b>Step {rec.step}</b> on <b>{esc(rec.branch)}</b>'
            f' · parent {rec.parent if rec.parent is not None else "–"}'
            f' · <span style="color:{status_colour(rec.status)};font-weight:600">● '
            f'{esc(rec.status)}</span> · {duration_text(rec.duration_ms)} · {started}'
            + (badge("HEAD", "#212121") if step == head else "") + "</div>")
        self.rewind_button.description = f"Rewind here ({step})"
        self.rewind_button.disabled = rec.state is None
        self.code.value = (f'<pre style="font-size:12px;background:#f5f5f5;padding:4px;margin:2px 0;'
                           f'max-height:200px;overflow:auto;white-space:pre-wrap">{esc(rec.code)}</pre>')
        self.outputs.outputs = outputs_for_widget(unflatten_outputs(rec.outputs))
        if rec.error_name and not any(o.get("output_type") == "error" for o in self.outputs.outputs):
            self.outputs.outputs += ({"output_type": "stream", "name": "stderr",
                                      "text": f"{rec.error_name}: {rec.error_value}\n"},)
        self.variables.value = self._variables_html(rec)
        self.extra.children = []
        self._hide_fork()

    def _variables_html(self, rec: Any) -> str:
        if rec.state is None:
            return _message(f"no state recorded for step {rec.step} ({rec.status})", ok=False)
        try:
            m = self.source.manifest(rec.step)
        except errors.FlowmetalError as exc:
            return _message(str(exc), ok=False)
        changed = set(rec.state.get("changed") or ())
        names = sorted(m, key=lambda n: (n not in changed, n))
        rows = [(f"<b>{esc(n)}</b>" if n in changed else esc(n), esc(m[n].type),
                 esc(size_text(m[n].size_bytes)), esc(m[n].summary[:80]),
                 "●" if n in changed else "") for n in names[:100]]
        more = (f'<div style="font-size:11px;color:#757575">… {len(names) - 100} more: '
                f'Inspect values lists all</div>' if len(names) > 100 else "")
        if not rows:
            return '<div style="font-size:12px;color:#757575">no variables</div>'
        return table_html(["name", "type", "size", "summary", "changed"], rows, raw=True) + more

    def _panels(self) -> W.Accordion | None:
        if not PANELS:
            return None
        titles = list(PANELS)
        acc = W.Accordion(children=[W.VBox() for _ in titles], selected_index=None)
        for i, t in enumerate(titles):
            acc.set_title(i, t)

        def opened(change: dict) -> None:
            i = change["new"]
            if i is not None and not acc.children[i].children:
                try:
                    acc.children[i].children = [PANELS[titles[i]](self.source)]
                except Exception as exc:
                    acc.children[i].children = [W.HTML(_message(str(exc), ok=False))]

        acc.observe(opened, names="selected_index")
        return acc


# -- entry points for the magics ----------------------------------------------------------


def timeline_widget(all_branches: bool = False, *, select: int | None = None,
                    rt: runtime.Runtime | None = None) -> TimelineWidget:
    """The time-travel widget (`%fm timeline`): steps of the current branch
    (or all), paged, with the branch graph; select a step to see its code,
    outputs and variables; Rewind here, Fork here, Diff with HEAD."""
    return TimelineWidget(Source(rt), all_branches=all_branches, select=select)


def inspect_widget(step: int | None = None, *, compare: int | None = None,
                   rt: runtime.Runtime | None = None):
    """The state inspector (`%fm inspect [STEP]`): variables after ``step``
    (default HEAD) as a sortable table; click a name to see its value as it
    was, optionally side by side with another step."""
    from .inspector import InspectWidget

    return InspectWidget(Source(rt), step, compare)


def diff_widget(a: int, b: int, *, rt: runtime.Runtime | None = None):
    """Names added, removed and changed from step ``a`` to step ``b``, with
    row/column change counts for DataFrames (`%fm diff A B` in a notebook).
    Its text/plain form is the same table `%fm diff` prints."""
    from .inspector import DiffWidget

    return DiffWidget(Source(rt), a, b)
