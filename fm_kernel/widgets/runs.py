"""The flow runs view (ipywidgets 8): the runs of this history, newest first,
and the journal of a selected run, with Fork from this step, Send signal and
Cancel. What `%fm runs` shows in a notebook frontend.

    from fm_kernel.widgets import runs_widget
    w = runs_widget()
    w.select(run.id)              # what clicking a run does (an id prefix works too)
    w.select_step(2)              # what clicking step 2 does
    w.fork_button.click()         # run.fork(from_step=2); w.message names the new run
    w.signal_name.value, w.signal_data.value = "go", '{"ok": true}'
    w.signal_button.click()       # run.signal("go", {"ok": True})
    w.cancel_button.click()       # run.cancel()

Everything is read through `runs_data` (the flows journal) and changed
through ``Run`` handles: no SQL here. Like the timeline, callbacks run on
the kernel's main thread between cells and update the widget through comm
messages only, so nothing is recorded as a cell output. The view reloads
when a run journals anything (widgets/hub.py), after each cell, and on Refresh.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import ipywidgets as W

from .. import errors
from .base import (
    ROW_PX, ListRow, LiveView, fill_rows, follow_cells, kernel_loop, plain_text,
    report_failure, themed,
)
from .busy import Busy
from .render import badge, col, duration_text, esc, row_box
from .style import ERR, INFO, MUTED, OK, PURPLE, WARN, dot, icon
from .runs_data import (
    PENDING, RUN_LIMIT, RunRow, StepView, clock, get_run, read_run, read_runs, read_steps,
)

__all__ = ["runs_widget", "RunsWidget", "RunRow", "StepView"]

log = logging.getLogger(__name__)

RUN_STATUS_COLOURS = {"running": INFO, "sleeping": PURPLE, "waiting": WARN, "succeeded": OK,
                      "failed": ERR, "cancelled": MUTED}
STEP_STATUS_COLOURS = {"ok": OK, "failed": ERR, "error": ERR, "timeout": ERR, "sleeping": PURPLE,
                       "waiting": WARN}


def _colour(status: str | None, table: dict[str, str]) -> str:
    return table.get(status or "", MUTED)


def _row_maker(on_click: Callable[[Any], None], width: str) -> Callable[[], ListRow]:
    def make() -> ListRow:
        return ListRow(on_click,
                       W.Layout(width=width, flex=f"0 0 {width}", height=f"{ROW_PX - 2}px",
                                margin="1px 4px 1px 0", padding="0"),
                       W.Layout(margin="0", flex="1 1 0", min_width="0", overflow="hidden"),
                       W.Layout(height=f"{ROW_PX}px", margin="0", align_items="center",
                                overflow="hidden"))
    return make


def _status(status: str, colour: str, width: int) -> str:
    return col(dot(colour) + esc(status), width, title=status,
               style=f"color:{colour};font-weight:600", cls="fm-status-col")


def run_row_html(r: RunRow) -> str:
    forked = (badge(f"fork of {r.forked_from_run[:8]}@{r.forked_from_step}")
              if r.forked_from_run else "")
    return row_box(
        col(f"<b>{esc(r.flow)}</b>", 120, title=r.flow)
        + _status(r.status, _colour(r.status, RUN_STATUS_COLOURS), 96)
        + col(esc(clock(r.started_at)), 128, style=f"color:{MUTED}")
        + col(esc(duration_text(r.duration_ms)), 64, style=f"color:{MUTED};text-align:right")
        + col(forked, title=f"forked from run {r.forked_from_run} at step {r.forked_from_step}"
              if r.forked_from_run else None))


def step_row_html(s: StepView) -> str:
    if s.error:
        outcome, colour = s.error, ERR
    elif s.pending:
        outcome, colour = s.pending, WARN
    else:
        outcome, colour = s.result, ""
    retries = (f"{s.failed_attempts} failed attempt{'s' * (s.failed_attempts != 1)}"
               if s.failed_attempts else "")
    shown = (f'<code style="font-size:12px">{esc(outcome)}</code>' if not colour
             else esc(outcome))
    return row_box(
        col(f"<b>{esc(s.name)}</b>", 150, title=s.name)
        + _status(s.status, _colour(s.status, STEP_STATUS_COLOURS), 84)
        + col(f"attempt {s.attempt}", 70, style=f"color:{MUTED}")
        + col(esc(duration_text(s.duration_ms)), 64, style=f"color:{MUTED};text-align:right")
        + col(shown, title=outcome, style=f"color:{colour}" if colour else "")
        + (col(esc(retries), 130, style=f"color:{ERR}") if retries else ""))


def pending_html(s: StepView) -> str:
    """One line of what a pending step waits for, behind an SVG icon."""
    kind = "sleeping" if s.status == "sleeping" else "waiting"
    return (f'<div class="fm-pending" style="font-size:12px;color:{WARN}">'
            f'{icon(kind)}{esc(s.pending)}</div>')


def run_header_html(run: RunRow) -> str:
    forked = (f' · forked from <code>{esc(run.forked_from_run[:8])}</code> at step '
              f'{run.forked_from_step}' if run.forked_from_run else "")
    return (f'<div style="font-size:13px"><b>{esc(run.flow)}</b> run '
            f'<code>{esc(run.run_id)}</code> · <span style="color:'
            f'{_colour(run.status, RUN_STATUS_COLOURS)};font-weight:600">'
            f'{dot(_colour(run.status, RUN_STATUS_COLOURS))}{esc(run.status)}</span>'
            f' · started {esc(clock(run.started_at))} · {esc(duration_text(run.duration_ms))}'
            f'{forked}</div>')


class RunsWidget(LiveView, W.VBox):
    """Flow runs newest first; a selected run's steps; Fork from this step,
    Send signal, Cancel."""

    def __init__(self, limit: int = RUN_LIMIT, select: str | None = None):
        super().__init__(layout=W.Layout(width="100%"))
        self.add_class("fm-runs")
        self.limit = limit
        self.selected: str | None = None
        self.selected_step: int | None = None
        self.last_fork: str | None = None
        self._runs: list[RunRow] = []
        self._steps: list[StepView] = []
        self._run_rows: list[ListRow] = []
        self._step_rows: list[ListRow] = []
        toolbar = self._build_toolbar()
        self.run_list = W.VBox(layout=W.Layout(flex="1 1 42%", min_width="360px",
                                               max_height="520px", overflow="auto"))
        self.run_list.add_class("fm-run-list")
        # wraps: on a narrow page (Notebook 7) the steps go below the runs
        body = W.HBox([self.run_list, self._build_detail()],
                      layout=W.Layout(width="100%", align_items="flex-start",
                                      flex_flow="row wrap"))
        self.children = [toolbar, body]
        themed(self)

        self.refresh()
        target = select or (self._runs[0].run_id if self._runs else None)
        if target is not None:
            self.select(target)
        else:
            self._show_detail()
        follow_cells(self)

    def _build_toolbar(self) -> W.HBox:
        self.refresh_button = W.Button(description="Refresh", icon="refresh",
                                       layout=W.Layout(width="100px"))
        self.refresh_button.add_class("fm-runs-refresh")
        self.refresh_button.on_click(lambda _b: self.refresh_quietly())
        self.count_label = W.HTML()
        return W.HBox([self.refresh_button, self.count_label],
                      layout=W.Layout(align_items="center"))

    def _build_detail(self) -> W.VBox:
        self.header = W.HTML()
        self.fork_button = W.Button(description="Fork from this step", icon="code-fork",
                                    tooltip="run.fork(from_step=K): a new run, steps before K "
                                            "from this run's journal, the rest re-executed",
                                    layout=W.Layout(width="auto"))
        self.cancel_button = W.Button(description="Cancel", icon="stop", button_style="danger",
                                      tooltip="run.cancel(): the run stops at its next durable "
                                              "operation and is never resumed")
        self.signal_name = W.Text(placeholder="signal name", layout=W.Layout(width="140px"))
        self.signal_data = W.Text(placeholder='JSON data, e.g. {"ok": true}',
                                  layout=W.Layout(width="220px"))
        self.signal_button = W.Button(description="Send signal", icon="paper-plane",
                                      layout=W.Layout(width="auto"))
        for b, cls in ((self.fork_button, "fm-runs-fork"), (self.cancel_button, "fm-runs-cancel"),
                       (self.signal_button, "fm-runs-signal"), (self.signal_name, "fm-signal-name"),
                       (self.signal_data, "fm-signal-data")):
            b.add_class(cls)
        self.fork_button.on_click(lambda _b: self.fork())
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.signal_button.on_click(lambda _b: self.send_signal())
        self.status = W.HTML()
        self.status.add_class("fm-runs-status")
        self.pending = W.HTML()
        self.step_list = W.VBox(layout=W.Layout(max_height="420px", overflow="auto"))
        self.step_list.add_class("fm-run-steps")
        actions = W.HBox([self.fork_button, self.cancel_button],
                         layout=W.Layout(flex_flow="row wrap"))
        signal = W.HBox([self.signal_name, self.signal_data, self.signal_button],
                        layout=W.Layout(flex_flow="row wrap"))
        self.busy = Busy(self, lambda: (self.fork_button, self.cancel_button, self.signal_button))
        detail = W.VBox([self.header, self.pending, actions, signal, self.busy.note, self.status,
                         self.step_list],
                        layout=W.Layout(flex="1 1 50%", min_width="380px", padding="0 0 0 12px"))
        detail.add_class("fm-run-detail")
        return detail

    # -- public actions (what the buttons do) ---------------------------------------

    @property
    def message(self) -> str:
        """The last result line (plain text)."""
        return plain_text(self.status.value)

    @property
    def runs(self) -> list[RunRow]:
        """The runs listed, newest first."""
        return list(self._runs)

    @property
    def steps(self) -> list[StepView]:
        """The selected run's steps as shown, by position."""
        return list(self._steps)

    def select(self, run_id: str) -> None:
        """Show a run's steps (``run_id`` or a unique prefix of it)."""
        match = [r.run_id for r in self._runs if r.run_id.startswith(run_id)]
        if len(match) != 1 and run_id not in match:
            if read_run(run_id) is None:
                self._say(f"no flow run {run_id!r} in this history" if not match else
                          f"{run_id!r} matches {len(match)} runs; type more of the id", ok=False)
                return
            match = [run_id]
        run_id = run_id if run_id in match else match[0]
        if run_id != self.selected:
            self.selected_step = None
            self.status.value = ""
        self.selected = run_id
        self._show_runs()
        self._show_detail()

    def select_step(self, position: int) -> None:
        """Mark a step as the one Fork from this step starts from."""
        if self.selected is None:
            self._say("select a run first", ok=False)
            return
        if position not in {s.position for s in self._steps}:
            self._say(f"run {self.selected[:8]} has no step at position {position}", ok=False)
            return
        self.selected_step = position
        self._show_steps()
        self.fork_button.description = f"Fork from step {position}"
        self.fork_button.disabled = False

    def fork(self, from_step: int | None = None) -> str:
        """``run.fork(from_step=K)`` for the selected run (default: the selected step)."""
        k = from_step if from_step is not None else self.selected_step
        if self.selected is None or k is None:
            return self._say("select a run, then a step of it, first", ok=False)
        parent = self.selected

        def act() -> str:
            new = get_run(parent).fork(from_step=k)
            self.last_fork = new.id
            return f"forked run {parent[:8]} from step {k}: new run {new.id}"

        return self._do(act, busy=f"forking run {parent[:8]} from step {k}")

    def send_signal(self, name: str | None = None, data: str | None = None) -> str:
        """``run.signal(name, json.loads(data))`` for the selected run; empty data sends null."""
        name = (self.signal_name.value if name is None else name).strip()
        text = (self.signal_data.value if data is None else data).strip()
        if self.selected is None:
            return self._say("select a run first", ok=False)
        if not name:
            return self._say("type the signal's name first", ok=False)
        try:
            value = json.loads(text) if text else None
        except ValueError as exc:
            return self._say(f"data is not valid JSON ({exc}); e.g. {{\"ok\": true}}", ok=False)
        run_id = self.selected

        def act() -> str:
            get_run(run_id).signal(name, value)
            self._later(0.3)  # the run takes it on its own thread: look again shortly
            return f"sent signal {name!r} to run {run_id[:8]} with {json.dumps(value)}"

        return self._do(act, busy=f"sending signal {name!r} to run {run_id[:8]}")

    def cancel(self) -> str:
        """``run.cancel()`` for the selected run."""
        if self.selected is None:
            return self._say("select a run first", ok=False)
        run_id = self.selected

        def act() -> str:
            run = get_run(run_id)
            status = run.status
            if status not in PENDING:
                raise errors.UsageError(f"run {run_id[:8]} is {status} already; only enqueued, "
                                        "running, sleeping or waiting runs can be cancelled")
            run.cancel()
            self._later(0.3)
            return f"cancelled run {run_id[:8]}"

        return self._do(act, busy=f"cancelling run {run_id[:8]}")

    def refresh(self) -> None:
        """Reload the run list and the selected run's steps."""
        self._runs = read_runs(self.limit)
        n = len(self._runs)
        pending = sum(1 for r in self._runs if r.status in PENDING)
        self.count_label.value = (
            '<span style="font-size:12px;padding-left:8px">'
            + (f"{n} run{'s' * (n != 1)}" + (f" (newest {self.limit})" if n >= self.limit else "")
               + f", {pending} pending" if n else
               "no flow runs yet; define one with @fm.flow and start it with .start(...)")
            + "</span>")
        self._show_runs()
        if self.selected is not None:
            self._show_detail()

    def after_cell(self) -> None:
        self.refresh_quietly()

    def changed(self, kinds: frozenset[str]) -> None:
        """A run journaled something (a step, a signal from outside) or a cell ran."""
        if kinds & {"flow", "cell"}:
            self.refresh_quietly()

    def refresh_quietly(self) -> None:
        """refresh() from a callback: a failure is logged and named in the
        view, never raised into the notebook."""
        try:
            self.refresh()
        except Exception as exc:  # a callback has no cell to raise into
            report_failure(log, self.status, "reloading the flow runs", exc)

    def text(self) -> str:
        """What frontends without widgets show instead."""
        n = len(self._runs)
        return (f"flowmetal runs: {n} flow run{'s' * (n != 1)} (a widget: open the notebook "
                "in JupyterLab or Notebook; `fm.runs()` gives them as a DataFrame)")

    # -- internals ---------------------------------------------------------------------

    def _error_line(self, exc: BaseException) -> str:
        text = str(exc)
        return text.splitlines()[0] if text else type(exc).__name__

    def _after_action(self) -> None:
        self.refresh_quietly()

    def _later(self, delay: float) -> None:
        loop = kernel_loop()
        if loop is not None:
            loop.call_later(delay, self.refresh_quietly)

    def _show_runs(self) -> None:
        items = [(r.run_id, r.run_id[:8], run_row_html(r), r.run_id == self.selected,
                  (f"fm-run-{r.run_id[:8]}",)) for r in self._runs]
        fill_rows(self._run_rows, self.run_list, items, _row_maker(self.select, "84px"))

    def _selected_run(self) -> RunRow | None:
        run = next((r for r in self._runs if r.run_id == self.selected), None)
        if self.selected is not None and run is None:  # older than the list's limit
            run = read_run(self.selected)
        return run

    def _show_detail(self) -> None:
        run = self._selected_run()
        if run is None:
            self.header.value = (f'<div style="font-size:12px;color:{MUTED}">select a run to '
                                 'see its steps</div>')
            self.pending.value = ""
            self._steps = []
            self._show_steps()
            for b in (self.fork_button, self.cancel_button, self.signal_button):
                b.disabled = True
            return
        self._steps = read_steps(run.run_id)
        if self.selected_step not in {s.position for s in self._steps}:
            self.selected_step = None
        self.header.value = run_header_html(run)
        self.pending.value = ("".join(pending_html(s) for s in self._steps if s.pending)
                              if run.status in PENDING else "")
        signal = next((s.detail.get("signal") for s in self._steps
                       if s.status == "waiting" and s.detail.get("signal")), None)
        if signal and not self.signal_name.value:
            self.signal_name.value = signal
        self.cancel_button.disabled = run.status not in PENDING
        self.signal_button.disabled = False  # a signal sent early is kept for a later wait
        self.fork_button.disabled = self.selected_step is None
        self.fork_button.description = (f"Fork from step {self.selected_step}"
                                         if self.selected_step is not None
                                         else "Fork from this step (select a step)")
        self._show_steps()

    def _show_steps(self) -> None:
        if not self._steps:
            self.step_list.children = [W.HTML(f'<div style="font-size:12px;color:{MUTED}">'
                                              'no steps recorded yet</div>')]
            self._step_rows = []
            return
        if not self._step_rows:  # the placeholder was shown: the rows come back
            self.step_list.children = []
        items = [(s.position, str(s.position), step_row_html(s), s.position == self.selected_step,
                  (f"fm-run-step-{s.position}",)) for s in self._steps]
        fill_rows(self._step_rows, self.step_list, items, _row_maker(self.select_step, "44px"))


def runs_widget(limit: int = RUN_LIMIT, *, select: str | None = None) -> RunsWidget:
    """The flow runs view (`%fm runs` in a notebook): runs newest first with
    flow, status, start and duration; select one to see its steps, pending
    timers and waits; Fork from this step, Send signal, Cancel."""
    return RunsWidget(limit=limit, select=select)
