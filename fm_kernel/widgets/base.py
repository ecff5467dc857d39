"""What every view of the package shares: the frontend test, the text
fallback, the one-line status messages and section titles, the reusable
list row, the hook that refreshes live views after each cell, and how a
failed callback is reported.

Nothing here reads the history or flows; views import this module, never
each other's private names.
"""

from __future__ import annotations

import html
import logging
import os
import re
from contextlib import nullcontext
from typing import Any, Callable

import ipywidgets as W

from ..errors import FlowmetalError
from .hub import hub
from .loader import kernel_loop
from .render import ROW_PX, esc
from .style import BORDER, ERR, OK, style_widget

__all__ = [
    "LiveView", "ListRow", "ROW_PX", "fill_rows", "follow_cells", "in_widget_frontend",
    "kernel_loop", "message_html", "plain_text", "report_failure", "section", "themed",
    "unfollow_cells", "with_text",
]


def in_widget_frontend() -> bool:
    """Whether this kernel was started by a Jupyter server for a notebook
    (JupyterLab, Notebook, VS Code), which renders widgets. Headless runs
    (`fm run`, nbval, nbconvert) and consoles get text instead."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def with_text(bundle: Any, text: str) -> Any:
    """A widget's mime bundle with ``text`` as its text/plain: what consoles,
    nbconvert and `fm run` show where widgets cannot be rendered."""
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    if isinstance(data, dict):
        data["text/plain"] = text
    return bundle


def message_html(text: str, ok: bool = True) -> str:
    """One result line under a view's buttons, green or red."""
    colour = OK if ok else ERR
    return f'<div style="color:{colour};font-size:12px;padding:2px 0">{esc(text)}</div>'


def plain_text(fragment: str) -> str:
    """An HTML fragment as the text a person reads in it."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def section(title: str) -> W.HTML:
    return W.HTML(f'<div style="font-weight:600;font-size:12px;margin-top:6px;'
                  f'border-bottom:1px solid {BORDER}">{esc(title)}</div>')


def themed(view: W.Box) -> None:
    """Mark ``view`` as one of ours and give it the stylesheet, so its
    colours follow JupyterLab's theme (see `style`)."""
    view.add_class("fm-view")
    view.children = (style_widget(), *view.children)


def report_failure(log: logging.Logger, status: W.HTML, what: str, exc: BaseException) -> str:
    """Log a failed callback with its traceback and show one line about it
    in ``status``: a comm callback has no cell whose output could show it."""
    log.error("%s failed", what, exc_info=exc)
    first = (str(exc).splitlines() or [""])[0]
    line = f"{what} failed: {type(exc).__name__}" + (f": {first}" if first else "")
    status.value = message_html(line + " (traceback in the kernel's log)", ok=False)
    return line


# -- rows of a list, reused from page to page -------------------------------------------


class ListRow:
    """One reusable row of a list: a button (what a click selects) and one
    HTML with the row's text. Rows are built once and re-filled, because
    making widgets is most of what showing a page costs."""

    def __init__(self, on_click: Callable[[Any], None], button_layout: W.Layout,
                 info_layout: W.Layout, box_layout: W.Layout | None = None):
        self.key: Any = None
        self.button = W.Button(layout=button_layout)
        self.info = W.HTML(layout=info_layout)
        self.box = W.HBox([self.button, self.info], layout=box_layout or W.Layout(
            height=f"{ROW_PX}px", margin="0", overflow="hidden", align_items="center"))
        self.button.on_click(lambda _b: self.key is not None and on_click(self.key))

    def show(self, key: Any, label: str, text_html: str, selected: bool,
             classes: tuple[str, ...]) -> None:
        self.key = key
        # one comm message for the button's three changes, not three: a page
        # turn is a page of rows of them, and each message costs the page a re-render
        with self.button.hold_sync():
            self.button.description = label
            self.button.button_style = "info" if selected else ""
            self.button._dom_classes = classes
        self.info.value = text_html
        self.box.layout.display = None

    def hide(self) -> None:
        self.key = None
        self.box.layout.display = "none"


def fill_rows(rows: list[ListRow], container: W.Box, items: list[tuple[Any, ...]],
              make: Callable[[], ListRow]) -> None:
    """Show ``items`` (ListRow.show arguments) in ``rows``, growing the pool
    with ``make`` when a page is longer than any before and hiding the rest."""
    if len(rows) < len(items):
        rows += [make() for _ in range(len(items) - len(rows))]
        container.children = [r.box for r in rows]
    for row, item in zip(rows, items):
        row.show(*item)
    for row in rows[len(items):]:
        row.hide()


# -- refresh after changes: the hub tells every live view -------------------------------

_HOOKED: set[int] = set()


def follow_cells(view: Any) -> None:
    """Call ``view.changed(kinds)`` on the kernel's loop after every change
    to the history (widgets/hub.py) and after every cell."""
    hub().subscribe(view)
    _ensure_hook()


def unfollow_cells(view: Any) -> None:
    hub().unsubscribe(view)


def pager_buttons(css: str) -> tuple[W.Button, W.Button]:
    """The previous/next page buttons of a paged table (classes css-prev, css-next)."""
    prev_button = W.Button(icon="chevron-left", tooltip="previous page",
                           layout=W.Layout(width="32px", flex="0 0 32px"))
    next_button = W.Button(icon="chevron-right", tooltip="next page",
                           layout=W.Layout(width="32px", flex="0 0 32px"))
    prev_button.add_class(f"{css}-prev")
    next_button.add_class(f"{css}-next")
    return prev_button, next_button


class LiveView:
    """Mixed into a view that follows cells (follow_cells) and has a text()
    for frontends that cannot show widgets. Its buttons run through ``_do``:
    one line in ``self.status`` for the outcome, ``_after_action`` on success."""

    def _say(self, text: str, ok: bool = True) -> str:
        self.status.value = message_html(text, ok)  # type: ignore[attr-defined]
        return text if ok else f"error: {text}"

    def _do(self, action: Callable[[], str], busy: str | None = None) -> str:
        """Run ``action``; with ``busy``, the view's busy state says so while
        it runs (widgets/busy.py) and is gone before the view refreshes."""
        try:
            with self.busy.during(busy) if busy else nullcontext():  # type: ignore[attr-defined]
                line = action()
        except FlowmetalError as exc:  # the user's to fix: its message says how
            return self._say(self._error_line(exc), ok=False)
        except Exception as exc:  # report in the widget: a comm callback has no cell
            # logged under the view's own module, as its other failures are
            return "error: " + report_failure(logging.getLogger(type(self).__module__),
                                              self.status, "the action", exc)  # type: ignore[attr-defined]
        self._after_action()
        return self._say(line)

    def _error_line(self, exc: BaseException) -> str:
        return str(exc)

    def _after_action(self) -> None:
        """What a view refreshes after one of its actions succeeded."""

    def changed(self, kinds: frozenset[str]) -> None:
        """The hub's call on the kernel's loop: the history changed (``kinds``
        ⊆ {"head", "flow", "cell"}); by default, what follows a cell."""
        self.after_cell()

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
    """post_run_cell runs inside the cell, before its record is committed;
    the hub tells the views on the kernel's loop, after the reply."""
    hub().hear("cell")
