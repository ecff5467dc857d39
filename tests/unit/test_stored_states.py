"""States stored as changes (record/stored_states.py, migration 12): every
state reads back exactly as it was written, names in order, through
Store.step and the `variables` view, over histories with rebinds, new
names, deletes, rewinds and wholesale changes; a state costs rows in
proportion to what its cell changed; a history written before migration 12
reads the same after it. The expected `variables` rows come from the view
as migration 6 defined it, over every state written out whole."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fm_kernel.record.migrations import MIGRATIONS
from fm_kernel.record.stored_states import WHOLE_AFTER
from fm_kernel.record.store import Store

from conftest import T0, step_record


def entry(name: str, value: int) -> dict[str, Any]:
    return {"id": f"e-{name}-{value}", "name": name, "type": "int", "size_bytes": 28,
            "summary": repr(value), "value": value, "restorable": True, "reason": None}


def simulate(n_steps: int, seed: int) -> list[tuple[dict[str, int], list[str]]]:
    """(namespace after the step, names it changed) for a run of cells that
    rebind, add, delete, change many names at once, do nothing, or start
    from an earlier step's state (a rewind). Dict order is kept the way a
    capture keeps it: a rebound name stays in place, a new one goes last."""
    rnd = random.Random(seed)
    ns = {f"a{i}": 0 for i in range(300)}
    out = [(dict(ns), list(ns))]
    for step in range(2, n_steps + 1):
        roll, changed = rnd.random(), []
        if roll < 0.05 and len(out) > 3:  # a rewind: the next cells grow from an old state
            ns = dict(out[rnd.randrange(len(out))][0])
        if roll < 0.10:
            for n in rnd.sample(sorted(ns), 2):
                del ns[n]
        elif roll < 0.15:
            changed = rnd.sample(sorted(ns), WHOLE_AFTER + 20)
        elif roll < 0.45:
            changed = [f"b{step}"]
        elif roll < 0.55:
            changed = []
        else:
            changed = rnd.sample(sorted(ns), rnd.randint(1, 4))
        for n in changed:
            ns[n] = step
        out.append((dict(ns), changed))
    return out


def write(path: Path, history: list[tuple[dict[str, int], list[str]]], bulk: bool) -> None:
    """Through the step log one record at a time (flushed in batches, as the
    kernel's checkpointer does), or in one columnar bulk write."""
    recs, entries, seen = [], [], set()
    for i, (ns, changed) in enumerate(history, start=1):
        new = [entry(n, v) for n, v in ns.items() if f"e-{n}-{v}" not in seen]
        seen.update(e["id"] for e in new)
        state = {"names": list(ns), "ids": [f"e-{n}-{v}" for n, v in ns.items()],
                 "changed": sorted(changed)}
        recs.append(step_record(i, f"cell {i}", parent=i - 1 or None, state=state))
        entries.append(new)
    store = Store.open(path)
    if bulk:
        store.append_steps(recs, [e for es in entries for e in es])
    else:
        for i, (rec, es) in enumerate(zip(recs, entries)):
            store.append_step(rec, es)
            if i % 17 == 16:
                store.flush_writers()
    store.close()


def sql(path: Path, query: str) -> list[tuple]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def old_view_rows(path: Path) -> list[tuple]:
    """`variables` as migration 6 defined it (over whole states), every state
    written out whole from what Store.step reads back."""
    store = Store.open(path, read_only=True)
    try:
        steps = [r[0] for r in store.query("SELECT DISTINCT step FROM fm_step_records").rows]
        states = {}
        for n in steps:
            rec = store.step(n)
            if rec.state is not None:
                sid = store.query("SELECT state_id FROM fm_step_records WHERE step = ?"
                                  " ORDER BY seq DESC LIMIT 1", [n]).rows[0][0]
                states[sid] = (rec.state["names"], rec.state["ids"])
    finally:
        store.close()
    view = MIGRATIONS[5].split("CREATE OR REPLACE VIEW variables AS", 1)[1]
    conn = duckdb.connect(str(path), read_only=True)
    try:
        conn.execute("CREATE TEMP TABLE whole (id VARCHAR, names VARCHAR[], ids VARCHAR[])")
        conn.executemany("INSERT INTO whole VALUES (?, ?, ?)",
                         [(k, v[0], v[1]) for k, v in states.items()])
        return sorted(conn.execute(re.sub(r"\bfm_states\b", "whole", view)).fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("bulk", [False, True], ids=["step-log", "bulk"])
def test_every_state_reads_back_as_written(tmp_path: Path, bulk: bool) -> None:
    history = simulate(240, seed=14)
    path = tmp_path / "h.duckdb"
    write(path, history, bulk)
    store = Store.open(path, read_only=True)
    try:
        for step, (ns, changed) in enumerate(history, start=1):
            state = store.step(step).state
            assert state["names"] == list(ns), step  # in order: restores walk it
            assert state["ids"] == [f"e-{n}-{v}" for n, v in ns.items()], step
    finally:
        store.close()
    rows = sorted(sql(path, "SELECT * FROM variables"))
    assert rows == old_view_rows(path)
    truth = sorted((step, n, v) for step, (ns, _) in enumerate(history, start=1)
                   for n, v in ns.items())
    assert [(r[0], r[1], int(r[5])) for r in rows] == truth


def test_a_state_costs_rows_in_what_its_cell_changed(tmp_path: Path) -> None:
    history = simulate(240, seed=3)
    path = tmp_path / "h.duckdb"
    write(path, history, bulk=False)
    # a change is taken from a whole state, never from another change: a read is two rows
    assert sql(path, "SELECT count(*) FROM fm_states c JOIN fm_states b ON b.id = c.base"
                     " WHERE b.base IS NOT NULL") == [(0,)]
    assert sql(path, "SELECT max(len(names)) FROM fm_states WHERE base IS NOT NULL") \
        <= [(WHOLE_AFTER,)]
    whole, changes = sql(path, "SELECT count(*) FILTER (base IS NULL),"
                               " count(*) FILTER (base IS NOT NULL) FROM fm_states")[0]
    assert changes > 3 * whole > 0
    assert sql(path, "SELECT count(*) FROM fm_states WHERE removed IS NOT NULL")[0][0] > 0
    # 300 names, then a new one, then one rebound, then one deleted: rows of
    # one and two names (and one removed); deleted and bound again: whole
    ns = {f"a{i}": 0 for i in range(300)}
    then = {**ns, "a7": 2, "b": 1}
    gone = {n: v for n, v in then.items() if n != "a3"}
    small = [(dict(ns), list(ns)), ({**ns, "b": 1}, ["b"]), (then, ["a7"]), (gone, []),
             ({**gone, "a3": 0}, ["a3"])]
    write(tmp_path / "small.duckdb", small, bulk=False)
    assert sql(tmp_path / "small.duckdb", "SELECT t.step, s.base IS NULL, len(s.names), s.removed"
               " FROM fm_step_records t JOIN fm_states s ON s.id = t.state_id ORDER BY t.step") \
        == [(1, True, 300, None), (2, False, 1, None), (3, False, 2, None), (4, False, 2, ["a3"]),
            (5, True, 301, None)]
    store = Store.open(tmp_path / "small.duckdb", read_only=True)
    try:
        assert [store.step(n).state["names"] for n in (4, 5)] == [list(gone), [*gone, "a3"]]
    finally:
        store.close()


def _v11_history(path: Path, history: list[tuple[dict[str, int], list[str]]]) -> None:
    """A history as schema 11 wrote it: every distinct state whole in fm_states."""
    conn = duckdb.connect(str(path))
    for m in MIGRATIONS[:11]:
        conn.execute(m)
    conn.execute("INSERT INTO fm_meta VALUES ('schema_version', '11')")
    conn.execute("INSERT INTO fm_branch_records VALUES (1, 'main', NULL, NULL, ?)", [T0])
    seen, states = set(), set()
    for i, (ns, changed) in enumerate(history, start=1):
        sid = f"s{hash(tuple(ns.items())) & 0xffffffff:08x}"
        if sid not in states:
            states.add(sid)
            conn.execute("INSERT INTO fm_states VALUES (?, ?, ?)",
                         [sid, list(ns), [f"e-{n}-{v}" for n, v in ns.items()]])
        for n, v in ns.items():
            if f"e-{n}-{v}" not in seen:
                seen.add(f"e-{n}-{v}")
                e = entry(n, v)
                conn.execute("INSERT INTO fm_var_entries VALUES (?, ?, 'int', 28, ?, ?, true,"
                             " NULL, '{}')", [e["id"], n, repr(v), str(v)])
        conn.execute("INSERT INTO fm_step_records (seq, step, branch, parent, kernel_id, code,"
                     " status, started_at, finished_at, duration_ms, outputs, state_id, changed)"
                     " VALUES (?, ?, 'main', ?, 'k-old', 'c', 'ok', ?, ?, 1.0, '[]', ?, ?)",
                     [i + 1, i, i - 1 or None, T0, T0, sid, sorted(changed)])
    conn.close()


def test_a_history_from_before_reads_the_same_and_grows_as_changes(tmp_path: Path) -> None:
    history = simulate(60, seed=7)
    path = tmp_path / "old.duckdb"
    _v11_history(path, history[:40])
    before = sorted(sql(path, "SELECT * FROM variables"))
    store = Store.open(path)  # migrates to 12: nothing is rewritten
    for i, (ns, changed) in enumerate(history[40:], start=41):
        state = {"names": list(ns), "ids": [f"e-{n}-{v}" for n, v in ns.items()],
                 "changed": sorted(changed)}
        store.append_step(step_record(i, "c", parent=i - 1, state=state),
                          [entry(n, v) for n, v in ns.items()])
    assert store.step(17).state["names"] == list(history[16][0])
    store.close()
    after = sorted(sql(path, "SELECT * FROM variables"))
    assert [r for r in after if r[0] <= 40] == before
    assert after == old_view_rows(path)
    assert sql(path, "SELECT count(*) FROM fm_states WHERE base IS NOT NULL")[0][0] > 0
