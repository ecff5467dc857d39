"""The busy state of a view while a click's work runs (a rewind, a fork, a
diff, a value load): at once the view's root gets the class ``fm-busy``, a
note with a turning spinner says what is going on ("restoring 3 names,
1.2 GB…"), and the view's action buttons are disabled; after the work —
done or failed — all is as it was. Work that takes over `PROGRESS_AFTER`
seconds and reports progress shows how far it got.

Every change is a comm message that leaves at once (ipykernel sends IOPub
from its own thread), so the state shows while the kernel's main thread is
still busy restoring.

    busy = Busy(view, lambda: [view.rewind_button, view.fork_button])
    with busy.during("restoring 3 names, 1.2 GB"):
        restore(progress=busy.progress)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import ipywidgets as W

from ..tables import human_bytes
from .render import esc
from .style import MUTED, icon

__all__ = ["BUSY_CLASS", "Busy", "NOTE_CLASS", "PROGRESS_AFTER", "restore_text"]

BUSY_CLASS = "fm-busy"          # on the view's root while work runs
NOTE_CLASS = "fm-busy-note"     # the note: spinner SVG (svg.fm-icon-spinner) and text
PROGRESS_AFTER = 0.2            # seconds before progress is shown
_REDRAW = 0.1                   # at most ten progress messages a second


def restore_text(names: int, size: int | None) -> str:
    """What a restore of ``names`` names (``size`` bytes, None: unknown) says."""
    text = f"restoring {names} name{'s' * (names != 1)}"
    return text + (f", {human_bytes(size)}" if size else "")


class Busy:
    """The busy state of one view (``root``); ``buttons`` gives the buttons to hold."""

    def __init__(self, root: W.DOMWidget, buttons: Callable[[], Iterable[W.Button]]):
        self.root = root
        self.buttons = buttons
        self.note = W.HTML(layout=W.Layout(display="none"))
        self.note.add_class(NOTE_CLASS)
        self.what = ""
        self._since = 0.0
        self._drawn = 0.0
        self._held: list[tuple[W.Button, bool]] = []

    @property
    def active(self) -> bool:
        return bool(self._since)

    def start(self, what: str) -> None:
        if self.active:  # nested work: one state, the newest words
            self._say(what)
            return
        self._since = time.monotonic()
        self.root.add_class(BUSY_CLASS)
        self._say(what)
        self.note.layout.display = None
        self._held = [(b, b.disabled) for b in self.buttons()]
        for b, _ in self._held:
            b.disabled = True

    def progress(self, done: int, total: int) -> None:
        """A progress callback (bytes done of total) for the work."""
        now = time.monotonic()
        if not self.active or now - self._since < PROGRESS_AFTER or now - self._drawn < _REDRAW:
            return
        self._drawn = now
        pct = int(100 * done / total) if total else 100
        self._say(self.what, f"{human_bytes(done)} of {human_bytes(total)} ({pct}%)")

    def stop(self) -> None:
        if not self.active:
            return
        self._since = 0.0
        self.root.remove_class(BUSY_CLASS)
        self.note.layout.display = "none"
        self.note.value = ""
        for b, was in self._held:
            b.disabled = was
        self._held = []

    @contextmanager
    def during(self, what: str | None) -> Iterator["Busy"]:
        """Busy for the ``with`` block (nothing when ``what`` is None)."""
        if what is None:
            yield self
            return
        self.start(what)
        try:
            yield self
        finally:
            self.stop()

    def _say(self, what: str, detail: str = "") -> None:
        self.what = what
        self.note.value = (f'<div class="fm-busy-line" style="font-size:12px;padding:2px 0">'
                           f'{icon("spinner", "working")}<span class="fm-busy-text">{esc(what)}…'
                           f'</span>' + (f' <span class="fm-busy-progress" style="color:{MUTED}">'
                                         f'{esc(detail)}</span>' if detail else "") + "</div>")
