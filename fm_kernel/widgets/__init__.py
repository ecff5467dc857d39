"""The widgets behind ``%fm timeline``, ``%fm inspect``, ``%fm diff`` and
``%fm runs`` (ipywidgets 8): the entry points the magics call.

    from fm_kernel.widgets import timeline_widget, inspect_widget, diff_widget, runs_widget

Behind them: ``base`` (what every view shares), ``source`` (the door to the
history), ``render`` (pure HTML/SVG fragments), ``loader`` (heavy work off the
kernel's main thread), ``timeline``, ``inspector`` (inspector and diff), and
``runs`` over ``runs_data`` (the flow runs view), and ``text`` (the text
forms of the timeline and the inspector, for frontends without widgets).
"""

from __future__ import annotations

from .. import runtime
from .base import in_widget_frontend
from .inspector import DiffWidget, InspectWidget
from .runs import RunsWidget, runs_widget
from .source import Source
from .text import inspect_text, timeline_text
from .timeline import DEFAULT_PANELS, Panels, TimelineWidget

__all__ = ["DEFAULT_PANELS", "DiffWidget", "InspectWidget", "RunsWidget", "Source",
           "TimelineWidget", "diff_widget", "in_widget_frontend", "inspect_widget", "runs_widget",
           "inspect_text", "timeline_text", "timeline_widget"]


def timeline_widget(all_branches: bool = False, *, select: int | None = None,
                    panels: Panels | None = None, rt: runtime.Runtime | None = None) -> TimelineWidget:
    """The time-travel widget (`%fm timeline`): steps of the current branch
    (or all), paged, with the branch graph; select a step to see its code,
    outputs and variables; Rewind here, Fork here, Diff with HEAD. ``panels``
    names the collapsed sections below it (default: "Flow runs")."""
    return TimelineWidget(Source(rt), all_branches=all_branches, select=select, panels=panels)


def inspect_widget(step: int | None = None, *, compare: int | None = None,
                   rt: runtime.Runtime | None = None) -> InspectWidget:
    """The state inspector (`%fm inspect [STEP]`): variables after ``step``
    (default HEAD) as a sortable table; click a name to see its value as it
    was, optionally side by side with another step."""
    return InspectWidget(Source(rt), step, compare)


def diff_widget(a: int, b: int, *, rt: runtime.Runtime | None = None) -> DiffWidget:
    """Names added, removed and changed from step ``a`` to step ``b``, with
    row/column change counts for DataFrames (`%fm diff A B` in a notebook).
    Its text/plain form is the same table `%fm diff` prints."""
    return DiffWidget(Source(rt), a, b)
