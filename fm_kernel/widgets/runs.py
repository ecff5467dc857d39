"""The flow runs view (ipywidgets 8): the runs of this history, newest first,
and the journal of a selected run, with Fork from this step, Send signal and
Cancel. What `%fm runs` shows in a notebook frontend.

    from fm_kernel.widgets.runs import runs_widget
    w = runs_widget()
    w.select(run.id)              # what clicking a run does (an id prefix works too)
    w.select_step(2)              # what clicking step 2 does
    w.fork_button.click()         # run.fork(from_step=2); w.message names the new run
    w.signal_name.value, w.signal_data.value = "go", '{"ok": true}'
    w.signal_button.click()       # run.signal("go", {"ok": True})
    w.cancel_button.click()       # run.cancel()

Everything is read through the flows API (``flows.journal()``: ``runs``,
``run_row``, ``step_rows``, ``signals``) and changed through ``Run`` handles
(``flows.get_run``): no SQL here. Like the timeline, callbacks run on the
kernel's main thread between cells and update the widget through comm
messages only, so nothing is recorded as a cell output. The view reloads on
**Refresh** and after each cell.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ipywidgets as W

from .timeline import LiveView, follow_cells, kernel_loop, register_panel
from .render import badge, duration_text, esc, table_html

__all__ = ["runs_widget", "RunsWidget", "RunRow", "StepView"]

RUN_LIMIT = 100
ROW_PX = 26
RUN_STATUS_COLOURS = {"running": "#1565c0", "sleeping": "#6a1b9a", "waiting": "#ef6c00",
                      "succeeded": "#2e7d32", "failed": "#c62828", "cancelled": "#757575"}
STEP_STATUS_COLOURS = {"ok": "#2e7d32", "failed": "#c62828", "error": "#e53935",
                       "timeout": "#e53935", "sleeping": "#6a1b9a", "waiting": "#ef6c00"}
PENDING = ("running", "sleeping", "waiting")


def _flows():
    from ..flows import core as flows

    return flows


def _colour(status: str | None, table: dict[str, str]) -> str:
    return table.get(status or "", "#757575")


def _epoch(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.timestamp()
    return float(v)


def _clock(ts: float | None, with_date: bool = True) -> str:
    if ts is None:
        return "–"
    d = dt.datetime.fromtimestamp(ts)
    return d.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "due now"
    return "in " + duration_text(seconds * 1000)


def _message(text: str, ok: bool = True) -> str:
    colour = "#2e7d32" if ok else "#c62828"
    return f'<div style="color:{colour};font-size:12px;padding:2px 0">{esc(text)}</div>'


def _clip(text: str, width: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _value_text(text: Any) -> str:
    """A journal column (JSON text) as one short line; pickled values by their repr."""
    if text is None:
        return ""
    try:
        v = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return _clip(str(text))
    if isinstance(v, dict) and v.get("$fm") == "pickle":
        return _clip(f"{v.get('type')}: {v.get('repr')}")
    return _clip(json.dumps(v))


def _error_text(text: Any) -> str:
    if not text:
        return ""
    try:
        info = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return _clip(str(text))
    return _clip(f"{info.get('type', 'error')}: {info.get('message', '')}")


# -- reading, through the flows API -------------------------------------------------


@dataclass
class RunRow:
    run_id: str
    flow: str
    status: str
    started_at: float | None
    finished_at: float | None
    forked_from_run: str | None = None
    forked_from_step: int | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, (end - self.started_at) * 1000)


@dataclass
class StepView:
    """One position of a run's journal: its latest record, the attempts
    before it, and what it waits for if it is pending."""

    position: int
    name: str
    status: str
    attempt: int
    started_at: float | None
    finished_at: float | None
    duration_ms: float | None
    result: str
    error: str
    pending: str = ""
    failed_attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def read_runs(limit: int = RUN_LIMIT) -> list[RunRow]:
    res = _flows().journal().runs(limit)
    return [RunRow(d["run_id"], d["flow"], d["status"], _epoch(d.get("started_at")),
                   _epoch(d.get("finished_at")), d.get("forked_from_run"),
                   d.get("forked_from_step")) for d in res.dicts()]


def read_steps(run_id: str) -> list[StepView]:
    """The run's journal, one entry per position (records are per attempt and
    per state change: a wait writes 'waiting', then 'ok')."""
    by_pos: dict[int, list[dict[str, Any]]] = {}
    for r in _flows().journal().step_rows(run_id):
        by_pos.setdefault(r["position"], []).append(r)
    out = []
    for p in sorted(by_pos):
        recs = by_pos[p]
        last, first = recs[-1], recs[0]
        started, finished = first.get("started_at"), last.get("finished_at")
        status = last["status"]
        if status in ("sleeping", "waiting") and started is not None:
            duration = (time.time() - started) * 1000
        elif started is not None and finished is not None:
            duration = max(0.0, (finished - started) * 1000)
        else:
            duration = last.get("duration_ms")
        detail = last.get("detail") or {}
        out.append(StepView(
            position=p, name=last["name"], status=status,
            attempt=max((r.get("attempt") or 0) for r in recs), started_at=started,
            finished_at=None if status in PENDING else finished, duration_ms=duration,
            result=_value_text(last.get("result")) if status == "ok" else "",
            error=_error_text(last.get("error")),
            pending=_pending_text(status, detail),
            failed_attempts=sum(1 for r in recs if r["status"] in ("error", "timeout", "failed")
                                and r is not last),
            detail=detail))
    return out


def _pending_text(status: str, detail: dict[str, Any]) -> str:
    now = time.time()
    if status == "sleeping" and detail.get("wake_at") is not None:
        return f"wakes at {_clock(detail['wake_at'])} ({_in(detail['wake_at'] - now)})"
    if status != "waiting":
        return ""
    deadline = detail.get("deadline")
    until = (f", times out at {_clock(deadline)} ({_in(deadline - now)})"
             if deadline is not None else ", no timeout")
    if detail.get("signal") is not None:
        return f"waits for signal {detail['signal']!r}{until}"
    if detail.get("callback") is not None:
        return f"waits for a POST to {_callback_url(detail['callback'])}{until}"
    return "waiting" + until


def _callback_url(cb_id: str) -> str:
    try:
        return f"{_flows()._base_url()}/callbacks/{cb_id}"
    except Exception:  # no endpoint in this kernel: the path is what stays valid
        return f"/callbacks/{cb_id}"


# -- the widget --------------------------------------------------------------------------


class _Row:
    """A reusable list row: a button (what a click selects) and its text."""

    def __init__(self, on_click: Callable[[Any], None], width: str):
        self.key: Any = None
        self.button = W.Button(layout=W.Layout(width=width, height=f"{ROW_PX - 2}px",
                                               margin="1px 4px 1px 0", padding="0"))
        self.info = W.HTML(layout=W.Layout(margin="0", flex="1 1 auto", min_width="0"))
        self.box = W.HBox([self.button, self.info],
                          layout=W.Layout(min_height=f"{ROW_PX}px", margin="0",
                                          align_items="center"))
        self.button.on_click(lambda _b: self.key is not None and on_click(self.key))

    def show(self, key: Any, label: str, html: str, selected: bool, cls: str) -> None:
        self.key = key
        self.button.description = label
        self.button.button_style = "info" if selected else ""
        self.button._dom_classes = (cls,)
        self.info.value = html
        self.box.layout.display = None

    def hide(self) -> None:
        self.key = None
        self.box.layout.display = "none"


def _fill(rows: list[_Row], container: W.Box, items: list[tuple[Any, str, str, bool, str]],
          on_click: Callable[[Any], None], width: str) -> None:
    if len(rows) < len(items):
        rows += [_Row(on_click, width) for _ in range(len(items) - len(rows))]
        container.children = [r.box for r in rows]
    for row, item in zip(rows, items):
        row.show(*item)
    for row in rows[len(items):]:
        row.hide()


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
        self._run_rows: list[_Row] = []
        self._step_rows: list[_Row] = []

        self.refresh_button = W.Button(description="Refresh", icon="refresh",
                                       layout=W.Layout(width="100px"))
        self.refresh_button.add_class("fm-runs-refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.count_label = W.HTML()
        toolbar = W.HBox([self.refresh_button, self.count_label],
                         layout=W.Layout(align_items="center"))

        self.run_list = W.VBox(layout=W.Layout(width="44%", min_width="340px",
                                               max_height="520px", overflow="auto"))
        self.run_list.add_class("fm-run-list")

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
        self.detail = W.VBox([self.header, self.pending, actions, signal, self.status,
                              self.step_list],
                             layout=W.Layout(flex="1 1 0", min_width="360px",
                                             padding="0 0 0 12px"))
        self.detail.add_class("fm-run-detail")
        body = W.HBox([self.run_list, self.detail],
                      layout=W.Layout(width="100%", align_items="flex-start"))
        self.children = [toolbar, body]

        self.refresh()
        target = select or (self._runs[0].run_id if self._runs else None)
        if target is not None:
            self.select(target)
        else:
            self._show_detail()
        follow_cells(self)

    # -- public actions (what the buttons do) ---------------------------------------

    @property
    def message(self) -> str:
        """The last result line (plain text)."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value))

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
            try:
                row = _flows().journal().run_row(run_id)
            except Exception:
                row = None
            if row is None:
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
            new = _flows().get_run(parent).fork(from_step=k)
            self.last_fork = new.id
            return f"forked run {parent[:8]} from step {k}: new run {new.id}"

        return self._do(act)

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
            _flows().get_run(run_id).signal(name, value)
            self._later(0.3)  # the run takes it on its own thread: look again shortly
            return f"sent signal {name!r} to run {run_id[:8]} with {json.dumps(value)}"

        return self._do(act)

    def cancel(self) -> str:
        """``run.cancel()`` for the selected run."""
        if self.selected is None:
            return self._say("select a run first", ok=False)
        run_id = self.selected

        def act() -> str:
            run = _flows().get_run(run_id)
            status = run.status
            if status not in PENDING:
                raise ValueError(f"run {run_id[:8]} is {status} already; only running, sleeping "
                                 "or waiting runs can be cancelled")
            run.cancel()
            self._later(0.3)
            return f"cancelled run {run_id[:8]}"

        return self._do(act)

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

    def refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:  # a refresh must never disturb the notebook
            pass

    def text(self) -> str:
        """What frontends without widgets show instead."""
        n = len(self._runs)
        return (f"flowmetal runs: {n} flow run{'s' * (n != 1)} (a widget: open the notebook "
                "in JupyterLab or Notebook; `fm.runs()` gives them as a DataFrame)")

    # -- internals ---------------------------------------------------------------------

    def _say(self, text: str, ok: bool = True) -> str:
        self.status.value = _message(text, ok)
        return text if ok else f"error: {text}"

    def _do(self, action: Callable[[], str]) -> str:
        try:
            line = action()
        except Exception as exc:  # report in the widget: a comm callback has no cell
            from ..errors import FlowmetalError

            text = str(exc) if isinstance(exc, (FlowmetalError, ValueError)) else \
                f"{type(exc).__name__}: {exc}"
            return self._say(text.splitlines()[0] if text else type(exc).__name__, ok=False)
        self.refresh_quietly()
        return self._say(line)

    def _later(self, delay: float) -> None:
        loop = kernel_loop()
        if loop is not None:
            loop.call_later(delay, self.refresh_quietly)

    def _show_runs(self) -> None:
        items = []
        for r in self._runs:
            forked = (badge(f"fork of {r.forked_from_run[:8]}@{r.forked_from_step}", "#455a64")
                      if r.forked_from_run else "")
            html = (f'<div style="white-space:nowrap;overflow:hidden;text-overflow:ellipsis;'
                    f'font-size:12px;line-height:{ROW_PX}px">'
                    f'<b style="display:inline-block;min-width:110px">{esc(r.flow)}</b> '
                    f'<span style="color:{_colour(r.status, RUN_STATUS_COLOURS)};font-weight:600;'
                    f'display:inline-block;width:78px">● {esc(r.status)}</span>'
                    f'<span style="color:#616161">{esc(_clock(r.started_at))}</span>'
                    f'<span style="color:#616161;display:inline-block;width:70px;text-align:right">'
                    f'{esc(duration_text(r.duration_ms))}</span>{forked}</div>')
            items.append((r.run_id, r.run_id[:8], html, r.run_id == self.selected,
                          f"fm-run-{r.run_id[:8]}"))
        _fill(self._run_rows, self.run_list, items, self.select, "84px")

    def _show_detail(self) -> None:
        run = next((r for r in self._runs if r.run_id == self.selected), None)
        if self.selected is not None and run is None:  # older than the list's limit
            row = _flows().journal().run_row(self.selected)
            if row is not None:
                run = RunRow(row["run_id"], row["flow"], row["status"], row.get("started_at"),
                             row.get("finished_at"), row.get("forked_from_run"),
                             row.get("forked_from_step"))
        if run is None:
            self.header.value = ('<div style="font-size:12px;color:#757575">select a run to see '
                                 'its steps</div>')
            self.pending.value = ""
            self._steps = []
            self._show_steps()
            for b in (self.fork_button, self.cancel_button, self.signal_button):
                b.disabled = True
            return
        self._steps = read_steps(run.run_id)
        if self.selected_step not in {s.position for s in self._steps}:
            self.selected_step = None
        forked = (f' · forked from <code>{esc(run.forked_from_run[:8])}</code> at step '
                  f'{run.forked_from_step}' if run.forked_from_run else "")
        self.header.value = (
            f'<div style="font-size:13px"><b>{esc(run.flow)}</b> run '
            f'<code>{esc(run.run_id)}</code> · <span style="color:'
            f'{_colour(run.status, RUN_STATUS_COLOURS)};font-weight:600">● {esc(run.status)}</span>'
            f' · started {esc(_clock(run.started_at))} · {esc(duration_text(run.duration_ms))}'
            f'{forked}</div>')
        waits = [s.pending for s in self._steps if s.pending]
        self.pending.value = ("".join(f'<div style="font-size:12px;color:#ef6c00">⏳ {esc(w)}</div>'
                                      for w in waits) if run.status in PENDING else "")
        signal = next((s.detail.get("signal") for s in self._steps
                       if s.status == "waiting" and s.detail.get("signal")), None)
        if signal and not self.signal_name.value:
            self.signal_name.value = signal
        alive = run.status in PENDING
        self.cancel_button.disabled = not alive
        self.signal_button.disabled = False  # a signal sent early is kept for a later wait
        self.fork_button.disabled = self.selected_step is None
        self.fork_button.description = (f"Fork from step {self.selected_step}"
                                         if self.selected_step is not None
                                         else "Fork from this step (select a step)")
        self._show_steps()

    def _show_steps(self) -> None:
        if not self._steps:
            self.step_list.children = [W.HTML('<div style="font-size:12px;color:#757575">'
                                              'no steps recorded yet</div>')]
            self._step_rows = []
            return
        if not self._step_rows:  # the placeholder was shown: the rows come back
            self.step_list.children = []
        items = []
        for s in self._steps:
            colour = _colour(s.status, STEP_STATUS_COLOURS)
            if s.error:
                outcome = f'<span style="color:#c62828">{esc(s.error)}</span>'
            elif s.pending:
                outcome = f'<span style="color:#ef6c00">{esc(s.pending)}</span>'
            else:
                outcome = f'<code style="font-size:12px">{esc(s.result)}</code>'
            retries = (f' <span style="color:#e53935">({s.failed_attempts} failed '
                       f'attempt{"s" * (s.failed_attempts != 1)})</span>'
                       if s.failed_attempts else "")
            html = (f'<div style="font-size:12px;line-height:{ROW_PX}px;white-space:nowrap;'
                    f'overflow:hidden;text-overflow:ellipsis">'
                    f'<b style="display:inline-block;min-width:130px">{esc(s.name)}</b> '
                    f'<span style="color:{colour};font-weight:600;display:inline-block;'
                    f'width:70px">{esc(s.status)}</span>'
                    f'<span style="color:#616161;display:inline-block;width:64px">attempt '
                    f'{s.attempt}</span>'
                    f'<span style="color:#616161;display:inline-block;width:64px;text-align:right;'
                    f'margin-right:8px">{esc(duration_text(s.duration_ms))}</span>'
                    f'{outcome}{retries}</div>')
            items.append((s.position, str(s.position), html, s.position == self.selected_step,
                          f"fm-run-step-{s.position}"))
        _fill(self._step_rows, self.step_list, items, self.select_step, "44px")

    def steps_table(self) -> str:
        """The selected run's steps as an HTML table (position, name, status,
        attempt, duration, result or error, pending)."""
        return table_html(["position", "name", "status", "attempt", "duration", "result or error"],
                          [(s.position, s.name, s.status, s.attempt, duration_text(s.duration_ms),
                            s.error or s.pending or s.result) for s in self._steps])


def runs_widget(limit: int = RUN_LIMIT, *, select: str | None = None) -> RunsWidget:
    """The flow runs view (`%fm runs` in a notebook): runs newest first with
    flow, status, start and duration; select one to see its steps, pending
    timers and waits; Fork from this step, Send signal, Cancel."""
    return RunsWidget(limit=limit, select=select)


# The timeline's collapsed "Flow runs" section (widgets.register_panel).
register_panel("Flow runs", lambda source: RunsWidget())
