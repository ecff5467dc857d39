"""The timeline's Variables section: a step's names, paged like the steps,
in natural order (v1, v2, v10) with the names the step changed first, a
filter box, and a fixed height that scrolls inside, so a state of hundreds
of names never makes the widget taller than a screen."""

from __future__ import annotations

import re
from typing import Any, Mapping

import ipywidgets as W

from .base import message_html, pager_buttons
from .render import esc, size_text, table_html
from .style import MUTED, WARN, dot

__all__ = ["PAGE_SIZE", "VariablesList", "natural_key"]

PAGE_SIZE = 50
MAX_HEIGHT = "280px"
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders the numbers inside names by value: v1, v2, v10
    (not v1, v10, v2). Case is ignored, then used to break ties."""
    parts = _DIGITS.split(name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p), name


class VariablesList(W.VBox):
    """Variables of one step: filter, pager, and a page of rows (name, type,
    size, summary, changed)."""

    def __init__(self, page_size: int = PAGE_SIZE):
        super().__init__()
        self.add_class("fm-variables")
        self.page_size = page_size
        self.page = 0
        self._entries: Mapping[str, Any] = {}
        self._changed: set[str] = set()
        self._names: list[str] = []
        self.filter = W.Text(placeholder="filter names", continuous_update=True,
                             layout=W.Layout(width="160px"))
        self.filter.add_class("fm-variables-filter")
        self.prev_button, self.next_button = pager_buttons("fm-variables")
        self.page_label = W.HTML()
        self.page_label.add_class("fm-variables-page")
        self.table = W.HTML(layout=W.Layout(max_height=MAX_HEIGHT, overflow="auto"))
        self.table.add_class("fm-variables-table")
        self.filter.observe(lambda _c: self._refilter(), names="value")
        self.prev_button.on_click(lambda _b: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _b: self.show_page(self.page + 1))
        self.bar = W.HBox([self.filter, self.prev_button, self.page_label, self.next_button],
                          layout=W.Layout(align_items="center", flex_flow="row wrap"))
        self.children = [self.bar, self.table]

    # -- public --------------------------------------------------------------------

    def set_entries(self, entries: Mapping[str, Any], changed: set[str]) -> None:
        """Show ``entries`` (name → manifest entry); ``changed`` are listed first."""
        self._entries, self._changed = entries, set(changed)
        self.bar.layout.display = None
        self._refilter()

    def say(self, text: str, ok: bool = True) -> None:
        """Show one line instead of the list (no state, an error)."""
        self._entries, self._changed, self._names = {}, set(), []
        self.bar.layout.display = "none"
        self.table.value = message_html(text, ok)

    def names(self) -> list[str]:
        """The names that pass the filter, in the order listed (all pages)."""
        return list(self._names)

    def shown(self) -> list[str]:
        """The names on the current page."""
        start = self.page * self.page_size
        return self._names[start:start + self.page_size]

    def pages(self) -> int:
        return max(1, -(-len(self._names) // self.page_size))

    def show_page(self, page: int) -> None:
        self.page = max(0, min(page, self.pages() - 1))
        names = self.shown()
        m, changed = self._entries, self._changed
        rows = [(f"<b>{esc(n)}</b>" if n in changed else esc(n), esc(m[n].type),
                 esc(size_text(m[n].size_bytes)), esc(m[n].summary[:120]),
                 dot(WARN) if n in changed else "") for n in names]
        if rows:
            self.table.value = table_html(["name", "type", "size", "summary", "changed"], rows,
                                          raw=True)
        else:
            text = "no names match the filter" if self._entries else "no variables"
            self.table.value = f'<div style="font-size:12px;color:{MUTED}">{text}</div>'
        total, start = len(self._names), self.page * self.page_size
        shown = f"{start + 1:,}–{start + len(names):,} of {total:,}" if names else f"0 of {total:,}"
        self.page_label.value = f'<span style="font-size:12px;padding:0 6px">{shown}</span>'
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.pages() - 1

    # -- internals -------------------------------------------------------------------

    def _refilter(self) -> None:
        text = (self.filter.value or "").strip().lower()
        changed = self._changed
        self._names = sorted((n for n in self._entries if text in n.lower()),
                             key=lambda n: (n not in changed, natural_key(n)))
        self.show_page(0)
