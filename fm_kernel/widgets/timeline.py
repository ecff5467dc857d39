"""The timeline widget (ipywidgets 8) behind `%fm timeline`: the steps as a
paged list with a branch graph; a selected step's code, outputs and
variables; Rewind here, Fork here, Diff with HEAD, Inspect values; and
collapsed sections (panels) below, the flow runs view by default.

    from fm_kernel.widgets import timeline_widget
    w = timeline_widget()       # steps, branch graph, outputs, Rewind/Fork/Diff
    w.select(3)                 # what clicking step 3 does
    w.rewind_button.click()     # or w.rewind(); w.message is the result line

Everything is read through `Source`; the live namespace changes only
through the buttons that say so (Rewind here, Fork here). Widgets read
lazily: a page of 20 steps at a time, a step's record and variable list on
click. Callbacks run on the kernel's main thread between cells, never inside
one, and update widgets through comm messages only: nothing they do is
recorded as a cell output.

Panels are named by whoever builds the timeline (``panels=``, a title →
``factory(source)`` mapping; default: "Flow runs", the runs view); each is
built the first time its section is opened.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import ipywidgets as W

from .. import errors
from ..record.recorder import unflatten_outputs
from .base import (
    ROW_PX, LiveView, follow_cells, kernel_loop, message_html, plain_text, report_failure,
    section, themed,
)
from .busy import Busy, restore_text
from .inspector import DiffWidget, InspectWidget
from .render import (
    badge, duration_text, esc, graph_px, graph_svg, layout, outputs_for_widget, row_html,
    status_colour,
)
from .runs import RunsWidget
from .style import CODE_BG, CODE_FONT, FG, HEAD_BG, HEAD_FG, dot
from .text import graph_lines
from .variables import VariablesList
from .source import Source, StepRow
from .steplist import StepList

__all__ = ["DEFAULT_PANELS", "PAGE_SIZE", "Panels", "TimelineWidget"]

log = logging.getLogger(__name__)

# Steps on a page. 20 rows are 520 px, so the widget stays within a screen
# beside a step's details; and a page turn is a comm message per row's button
# (steplist.py): in JupyterLab under load, ~95 ms for 50 rows, ~60 for 25.
PAGE_SIZE = 20
Panels = Mapping[str, Callable[[Source], W.Widget]]


def flow_runs_panel(source: Source) -> W.Widget:
    """The timeline's "Flow runs" section: the runs view of this history."""
    return RunsWidget()


DEFAULT_PANELS: Panels = {"Flow runs": flow_runs_panel}


def code_html(code: str | None) -> str:
    """A cell's code in the theme's code font, on its editor background."""
    return (f'<pre class="fm-code" style="font-family:{CODE_FONT};font-size:12px;'
            f'background:{CODE_BG};color:{FG};padding:4px 6px;margin:2px 0;max-height:160px;'
            f'overflow:auto;white-space:pre-wrap;word-break:normal;overflow-wrap:anywhere">'
            f'{esc(code)}</pre>')


def _row_html(svg: str, graph_width: int, text: str) -> str:
    """A step row after its button: the graph slice in a column of fixed
    width (so the slices of adjacent rows join, whatever the text), then
    the text, which clips instead of pushing."""
    return (f'<div style="display:flex;align-items:center;height:{ROW_PX}px;min-width:0">'
            f'<div class="fm-graph-col" style="flex:0 0 {graph_width}px;width:{graph_width}px;'
            f'height:{ROW_PX}px">{svg}</div>'
            f'<div style="flex:1 1 0;min-width:0;overflow:hidden;padding-left:4px">{text}</div>'
            f'</div>')


class TimelineWidget(LiveView, W.VBox):
    """Steps as a paged list with a branch graph; a selected step's code,
    outputs and variables; Rewind here, Fork here, Diff with HEAD."""

    def __init__(self, source: Source | None = None, all_branches: bool = False,
                 page_size: int = PAGE_SIZE, select: int | None = None,
                 panels: Panels | None = None):
        super().__init__(layout=W.Layout(width="100%"))
        self.add_class("fm-timeline")
        self.source = source or Source()
        self.page_size = page_size
        self.page = 0
        self.selected: int | None = None
        self._rows_data: list[StepRow] = []
        self._index: dict[int, int] = {}
        self._graph: list[Any] = []
        self._heads: dict[str, int | None] = {}
        self._version: tuple[Any, ...] | None = None
        self.panel_factories: dict[str, Callable[[Source], W.Widget]] = dict(
            DEFAULT_PANELS if panels is None else panels)
        toolbar = self._build_toolbar(all_branches)
        self.rows = StepList(self.select, *self._row_layouts)
        self.step_list = W.VBox([self.rows], layout=W.Layout(
            flex="1 1 45%", min_width="380px", max_width="100%", overflow="hidden"))
        self.step_list.add_class("fm-step-list")
        # wraps: on a narrow page (Notebook 7) the details go below the steps
        body = W.HBox([self.step_list, self._build_detail()],
                      layout=W.Layout(width="100%", align_items="flex-start",
                                      flex_flow="row wrap"))
        self.panels = self._build_panels()
        self.children = [toolbar, body] + ([self.panels] if self.panels is not None else [])
        themed(self)

        self.refresh(follow=True)
        target = select if select is not None else (self.source.head or self._last())
        if target is not None:
            self.select(target)
        follow_cells(self)

    def _build_toolbar(self, all_branches: bool) -> W.HBox:
        self.scope = W.ToggleButtons(options=[("this branch", "branch"), ("all branches", "all")],
                                     value="all" if all_branches else "branch",
                                     style={"button_width": "104px"})
        self.prev_button = W.Button(description="older", icon="chevron-left",
                                    layout=W.Layout(width="84px"))
        self.next_button = W.Button(description="newer", icon="chevron-right",
                                    layout=W.Layout(width="84px"))
        self.page_label = W.HTML()
        self.page_label.add_class("fm-page-label")
        self.goto = W.Text(placeholder="go to step", continuous_update=False,
                           layout=W.Layout(width="100px"))
        self.head_label = W.HTML()
        self.scope.observe(lambda _c: self._scope_changed(), names="value")
        self.prev_button.on_click(lambda _b: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _b: self.show_page(self.page + 1))
        self.goto.observe(lambda c: self._goto(c["new"]), names="value")
        # One layout for every step button: making widgets is most of what
        # building the timeline costs.
        self._row_layouts = (
            W.Layout(width="58px", flex="0 0 auto", height=f"{ROW_PX - 2}px",
                     margin="1px 4px 1px 0", padding="0"),  # in a column: auto, not 58px high
            W.Layout(margin="0", overflow="hidden", flex="1 1 0", min_width="0"))
        return W.HBox([self.scope, self.prev_button, self.page_label, self.next_button,
                       self.goto, self.head_label],
                      layout=W.Layout(flex_flow="row wrap", align_items="center"))

    def _build_actions(self) -> W.HBox:
        self.rewind_button = W.Button(description="Rewind here", icon="undo",
                                      tooltip="make the namespace the state after this step")
        self.fork_button = W.Button(description="Fork here", icon="code-fork",
                                    tooltip="new branch from this step, then switch to it")
        self.diff_button = W.Button(description="Diff with HEAD", icon="exchange")
        self.inspect_button = W.Button(description="Inspect values", icon="search")
        for b, cls in ((self.rewind_button, "fm-rewind"), (self.fork_button, "fm-fork"),
                       (self.diff_button, "fm-diff"), (self.inspect_button, "fm-inspect")):
            b.add_class(cls)
            b.layout = W.Layout(width="auto", flex="0 0 auto")  # the label decides, never cut
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
        return W.HBox([self.rewind_button, self.fork_button, self.diff_button,
                       self.inspect_button], layout=W.Layout(flex_flow="row wrap"))

    def _build_detail(self) -> W.VBox:
        self.header = W.HTML()
        actions = self._build_actions()
        self.status = W.HTML()
        self.status.add_class("fm-status")
        self.code = W.HTML()
        self.outputs = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))
        self.outputs.add_class("fm-outputs")
        self.variables = VariablesList()
        # diff or inspector, on demand: at the top of the pane, under the
        # buttons that asked for it, never below a tall variable list
        self.extra = W.VBox()
        self.extra.add_class("fm-extra")
        self.busy = Busy(self, lambda: (self.rewind_button, self.fork_button, self.diff_button,
                                        self.inspect_button, self.fork_confirm))
        self.detail = W.VBox([self.header, actions, self.fork_box, self.busy.note, self.status,
                              self.extra, section("Code"), self.code, section("Outputs"),
                              self.outputs, section("Variables"), self.variables],
                             layout=W.Layout(flex="1 1 50%", min_width="340px",
                                             padding="0 0 0 12px"))
        self.detail.add_class("fm-detail")
        return self.detail

    # -- public actions (what the buttons do) ----------------------------------------

    @property
    def message(self) -> str:
        """The last result line shown under the buttons (plain text)."""
        return plain_text(self.status.value)

    def select(self, step: int) -> None:
        """Show ``step``: move to its page, load its code, outputs, variables."""
        if step not in self._index:
            if self.scope.value == "branch" and self.source.exists(step):
                self.scope.value = "all"  # the step is on another branch: show all
            if step not in self._index:
                self.status.value = message_html(f"no step {step} in this history", ok=False)
                return
        self.selected = step
        self.show_page(self._index[step] // self.page_size)
        self._load_detail(step)

    def rewind(self, step: int | None = None) -> str:
        """Rewind the live namespace to ``step`` (default: the selected one)."""
        step = step if step is not None else self.selected
        if step is None:
            return self._say("select a step first", ok=False)
        self.busy.start(f"rewinding to step {step}")  # at once: the size below takes reads
        return self._do(lambda: self.source.rewind(step, self.busy.progress),
                        busy=self._restoring(step, "rewinding to"))

    def fork(self, name: str, step: int | None = None) -> str:
        """Create branch ``name`` at ``step`` (default: the selected one) and switch to it."""
        step = step if step is not None else self.selected
        if step is None:
            return self._say("select a step first", ok=False)
        name = (name or "").strip()
        if not name:
            return self._say("type a name for the new branch first", ok=False)
        self.busy.start(f"forking {name} from step {step}")
        line = self._do(lambda: self.source.fork(name, step, self.busy.progress),
                        busy=self._restoring(step, f"forking {name} from"))
        if not line.startswith("error"):
            self._hide_fork()
            self.fork_name.value = ""
        return line

    def show_diff(self, other: int | None = None) -> None:
        """Diff the selected step against ``other`` (default HEAD) below the details."""
        other = other if other is not None else self.source.head
        if self.selected is None or other is None:
            self._say("select a step first (and run a cell so HEAD exists)", ok=False)
            return
        self.busy.start(f"comparing step {self.selected} with HEAD (step {other})")
        try:
            view = DiffWidget(self.source, self.selected, other, on_done=self.busy.stop)
        except Exception as exc:
            self.busy.stop()
            if not isinstance(exc, errors.FlowmetalError):
                raise
            self._say(str(exc), ok=False)
            return
        self.extra.children = [section(f"Diff: step {self.selected} → HEAD (step {other})"), view]
        if not view.pending:
            self.busy.stop()

    def show_inspector(self) -> None:
        if self.selected is None:
            self._say("select a step first", ok=False)
            return
        try:
            with self.busy.during(f"reading the variables of step {self.selected}"):
                view = InspectWidget(self.source, self.selected)
            self.extra.children = [section(f"Values after step {self.selected}"), view]
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

    def changed(self, kinds: frozenset[str]) -> None:
        """HEAD moved or a cell ran, here or in another view (widgets/hub.py)."""
        if kinds & {"head", "cell"}:
            self.after_cell()

    def refresh_if_changed(self, tries: int = 0) -> None:
        """After a cell: refresh once its record is committed (retried briefly,
        because the hook fires before the kernel writes the record)."""
        if self.source.rt.closing:  # the kernel is shutting down: nothing to show
            return
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
        except Exception as exc:  # a callback has no cell to raise into
            if not self.source.rt.closing:  # a store closed under it by shutdown is no failure
                report_failure(log, self.status, "refreshing the timeline after the cell", exc)

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
        items = [(d.step, str(d.step),
                  _row_html(graph_svg(g, lanes, d.status, d.step == head), graph_px(lanes),
                            row_html(d.status, d.duration_ms, d.code, labels.get(d.step, ()),
                                     d.step == head)),
                  d.step == self.selected, ("fm-step-button", f"fm-step-{d.step}"))
                 for d, g in zip(chunk, graph)]
        self.rows.show(items)
        total = len(self._rows_data)
        self.page_label.value = ('<span style="font-size:12px;padding:0 6px">'
                                 + (f"steps {start + 1:,}–{start + len(chunk):,} of {total:,}"
                                    if total else "no steps yet") + "</span>")
        self.prev_button.disabled = page == 0
        self.next_button.disabled = page >= self._pages() - 1

    def text(self) -> str:
        """What frontends without widgets (nbconvert, `fm run`) show instead:
        the branch graph of the newest steps, as `%fm timeline` prints it there."""
        n, head, branch = len(self._rows_data), self.source.head, self.source.branch
        top = f"HEAD: {branch} @ step {head if head else '–'} · {n:,} step{'s' * (n != 1)}"
        lines = graph_lines(self._rows_data, self._heads, head, branch)
        return "\n".join([top, *lines])

    # -- internals ------------------------------------------------------------------

    def _pages(self) -> int:
        return max(1, -(-len(self._rows_data) // self.page_size))

    def _last(self) -> int | None:
        return self._rows_data[-1].step if self._rows_data else None

    def _scope_changed(self) -> None:
        self.refresh()
        if self.selected in self._index:
            self.show_page(self._index[self.selected] // self.page_size)

    def _after_action(self) -> None:
        self.refresh()
        if self.selected is not None:
            self.select(self.selected)

    def _restoring(self, step: int, verb: str) -> str:
        """What the busy state says while moving to ``step``."""
        try:
            return f"{restore_text(*self.source.restore_size(step))} ({verb} step {step})"
        except Exception:  # the words are a courtesy; the move itself reports its own failure
            return f"{verb} step {step}"

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
            f' · <span style="color:{status_colour(rec.status)};font-weight:600">'
            f'{dot(status_colour(rec.status))}{esc(rec.status)}</span>'
            f' · {duration_text(rec.duration_ms)} · {started}'
            + (badge("HEAD", HEAD_BG, HEAD_FG) if step == head else "") + "</div>")
        self.rewind_button.description = f"Rewind here ({step})"
        self.rewind_button.disabled = rec.state is None
        self.code.value = code_html(rec.code)
        self.outputs.outputs = outputs_for_widget(unflatten_outputs(rec.outputs),
                                                  trusted=self.source.trusted)
        if rec.error_name and not any(o.get("output_type") == "error" for o in self.outputs.outputs):
            self.outputs.outputs += ({"output_type": "stream", "name": "stderr",
                                      "text": f"{rec.error_name}: {rec.error_value}\n"},)
        self._show_variables(rec)
        self.extra.children = []
        self._hide_fork()

    def _show_variables(self, rec: Any) -> None:
        if rec.state is None:
            self.variables.say(f"no state recorded for step {rec.step} ({rec.status})", ok=False)
            return
        try:
            m = self.source.manifest(rec.step)
        except errors.FlowmetalError as exc:
            self.variables.say(str(exc), ok=False)
            return
        self.variables.set_entries(m, set(rec.state.get("changed") or ()))

    def _build_panels(self) -> W.Accordion | None:
        """One collapsed section per panel; a panel is built when first opened."""
        titles = list(self.panel_factories)
        if not titles:
            return None
        acc = W.Accordion(children=[W.VBox() for _ in titles], selected_index=None)
        acc.add_class("fm-panels")
        for i, t in enumerate(titles):
            acc.set_title(i, t)
        acc.observe(lambda change: self._open_panel(titles, change["new"]), names="selected_index")
        return acc

    def _open_panel(self, titles: list[str], i: int | None) -> None:
        if i is None or self.panels is None or self.panels.children[i].children:
            return
        box = self.panels.children[i]
        try:
            box.children = [self.panel_factories[titles[i]](self.source)]
        except Exception as exc:  # a callback has no cell to raise into
            note = W.HTML()
            report_failure(log, note, f"building the {titles[i]!r} section", exc)
            box.children = [note]
