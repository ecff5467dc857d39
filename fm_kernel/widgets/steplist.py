"""The timeline's rows: a column of step buttons beside ONE HTML widget
holding every row's graph slice and text.

Why one HTML and not a row widget each: a page turn is a comm message per
changed widget, and the page re-renders on each. Rows of their own cost two
or three messages a row (~150 a page of 50 rows, ~140-190 ms in JupyterLab,
bench/widgets_browser.py); here a page is one message for the text and one
per button (its label, style and classes held into one with ``hold_sync``).
Buttons beyond the page are kept, hidden by a class, for the next long page.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ipywidgets as W

__all__ = ["SPARE_CLASS", "StepList"]

SPARE_CLASS = "fm-step-spare"  # a button with no row on this page (display: none)

# (key, button label, the row's HTML, selected, the button's classes)
Item = tuple[Any, str, str, bool, tuple[str, ...]]


class StepList(W.HBox):
    """Buttons (what a click selects) in one column, the rows' HTML in the
    other; row i of the HTML is ROW_PX high, as button i with its margins."""

    def __init__(self, on_click: Callable[[Any], None], button_layout: W.Layout,
                 text_layout: W.Layout):
        super().__init__(layout=W.Layout(width="100%", margin="0", align_items="flex-start"))
        self.steps: list[Any] = []
        self.texts: list[str] = []
        self.buttons: list[W.Button] = []
        self._on_click = on_click
        self._button_layout = button_layout
        self.column = W.VBox(layout=W.Layout(flex="0 0 auto", margin="0"))
        self.text = W.HTML(layout=text_layout)
        self.text.add_class("fm-step-rows")
        self.children = [self.column, self.text]

    def show(self, items: Sequence[Item]) -> None:
        """Show ``items``; buttons are made only when a page is longer than any before."""
        if len(self.buttons) < len(items):
            self.buttons += [self._button(i) for i in range(len(self.buttons), len(items))]
            self.column.children = self.buttons
        self.steps = [it[0] for it in items]
        self.texts = [it[2] for it in items]
        for i, button in enumerate(self.buttons):
            label, style, classes = ((items[i][1], "info" if items[i][3] else "", items[i][4])
                                     if i < len(items) else ("", "", (SPARE_CLASS,)))
            with button.hold_sync():  # one message, not three
                button.description = label
                button.button_style = style
                button._dom_classes = classes
        self.text.value = "".join(self.texts)

    def _button(self, i: int) -> W.Button:
        button = W.Button(layout=self._button_layout)
        button.on_click(lambda _b: i < len(self.steps) and self._on_click(self.steps[i]))
        return button
