"""The widgets behind ``%fm timeline``, ``%fm inspect``, ``%fm diff`` and
``%fm runs`` (ipywidgets 8).

    from fm_kernel.widgets import timeline_widget, inspect_widget, diff_widget, runs_widget
"""

from __future__ import annotations

from .runs import runs_widget
from .timeline import diff_widget, inspect_widget, timeline_widget

__all__ = ["diff_widget", "inspect_widget", "runs_widget", "timeline_widget"]
