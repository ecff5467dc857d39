"""An in-memory history (the last-resort substitute when no file can be
written) keeps its object files and flow log in a private temp folder: it
never leaves `:memory:.objects/` or `:memory:.flowlog` in the working
directory, and closing it removes them."""

from __future__ import annotations

import os
from pathlib import Path

from fm_kernel.flows.journal import Journal
from fm_kernel.record.store import Store
from fm_kernel.state.states import States


def test_sidecars_of_an_in_memory_history_stay_out_of_the_working_dir(tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store.open(Path(":memory:"))
    ns: dict = {"big": list(range(50_000)), "x": 1}
    states = States(store, ns)
    state, entries, cap = states.capture("big = list(range(50_000))\nx = 1")
    states.committed(entries, cap)
    journal = Journal(store)
    key = journal.objects.put(b"a flow result" * 100)
    assert journal.objects.get(key) == b"a flow result" * 100
    journal.close()
    scratch = store.sidecar(".objects").parent
    assert scratch != tmp_path and oct(scratch.stat().st_mode & 0o777) == "0o700"
    assert os.listdir(tmp_path) == []
    store.close()
    assert not scratch.exists()
