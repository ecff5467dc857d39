"""A namespace and its snapshotter driven cell by cell, as the kernel does
(capture after each cell, rewinds that make the restored state the head),
with no kernel: for the in-process tests of capture and restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fm_kernel.record.objects import ObjectFiles
from fm_kernel.state.snapshot import Capture, Snapshotter


class Cells:
    def __init__(self, root: Path, **names: Any) -> None:
        self.objects = ObjectFiles(root / "h.objects", defer=True)
        self.snap = Snapshotter(self.objects)
        self.ns: dict[str, Any] = {"__name__": "__main__", **names}
        self.states: list[Capture] = []

    def run(self, code: str) -> Capture:
        exec(code, self.ns)
        cap = self.snap.capture(self.ns, code, self.states[-1].manifest if self.states else None)
        self.objects.sync()
        self.states.append(cap)
        return cap

    def rewind(self, i: int) -> Any:
        r = self.snap.restore(self.states[i].manifest, self.ns, self.states[-1].manifest)
        self.states.append(Capture(r.manifest, set(), set()))
        return r
