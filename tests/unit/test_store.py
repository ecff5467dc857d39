"""The store over a real DuckDB file: what a step's records become in the
views, numbering across reopen, states and entries, bulk writes, events,
copies, and the errors of opening. Views are read back through a separate
read-only connection once the store is closed, as `fm sql` would see them."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fm_kernel import errors
from fm_kernel.record.store import SCHEMA_VERSION, Store


def sql(path: Path, query: str, params: list[Any] | None = None) -> list[tuple]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return conn.execute(query, params or []).fetchall()
    finally:
        conn.close()


def entry(eid: str, name: str, value: Any) -> dict[str, Any]:
    return {"id": eid, "name": name, "type": type(value).__name__, "size_bytes": 28,
            "summary": repr(value), "value": value, "restorable": True, "reason": None}


def test_a_new_history_is_owner_only_and_at_the_current_schema(history_file: Path) -> None:
    store = Store.open(history_file)
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    store.close()
    assert stat.S_IMODE(history_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(history_file.parent.stat().st_mode) == 0o700
    assert sql(history_file, "SELECT name, head, base FROM branches") == [("main", None, None)]


def test_the_views_keep_the_latest_record_of_each_step(store: Store, make_step) -> None:
    out = [{"position": 0, "output_type": "stream", "mime": "text/plain", "content": "hi\n",
            "meta": {"name": "stdout"}}]
    store.append_step(make_step(1, "print('hi')", "running"))
    store.append_step(make_step(1, "print('hi')", "ok", outputs=out))
    store.append_step(make_step(2, "1/0", "error", parent=1, error_name="ZeroDivisionError",
                                error_value="division by zero", traceback=["Traceback", "..."]))
    rec = store.step(1)
    assert rec is not None and rec.status == "ok" and rec.outputs == out
    assert store.step(99) is None
    path = store.path
    store.close()
    assert sql(path, "SELECT step, status, parent, error_name, traceback FROM steps ORDER BY step") \
        == [(1, "ok", None, None, None),
            (2, "error", 1, "ZeroDivisionError", ["Traceback", "..."])]
    assert sql(path, "SELECT step, position, output_type, mime, content, meta->>'name' FROM outputs") \
        == [(1, 0, "stream", "text/plain", "hi\n", "stdout")]
    assert sql(path, "SELECT kind, step FROM events WHERE kind LIKE 'step_%' ORDER BY seq") == \
        [("step_running", 1), ("step_ok", 1), ("step_error", 2)]
    assert sql(path, "SELECT head FROM branches WHERE name = 'main'") == [(2,)]


def test_step_and_sequence_numbers_continue_after_a_reopen(history_file: Path, make_step) -> None:
    store = Store.open(history_file)
    for n in (store.next_step(), store.next_step()):
        store.append_step(make_step(n))
    store.append_event("kernel_stopped", payload={"clean": True})
    store.close()
    store = Store.open(history_file)
    assert store.last_step == 2 and store.next_step() == 3
    store.append_step(make_step(3))
    store.close()
    seqs = [s for (s,) in sql(history_file, "SELECT seq FROM events ORDER BY seq")]
    assert len(seqs) == len(set(seqs)) == 4 and seqs == sorted(seqs)


def test_states_and_entries_become_the_variables_view(store: Store, make_step) -> None:
    e1, e2, e3 = entry("e1", "x", 1), entry("e2", "name", "ada"), entry("e3", "x", 2)
    state1 = {"names": ["name", "x"], "ids": ["e2", "e1"], "changed": ["name", "x"]}
    store.append_step(make_step(1, "x = 1; name = 'ada'", state=state1), [e1, e2])
    store.append_step(make_step(2, "pass", parent=1, state={**state1, "changed": []}))
    store.append_step(make_step(3, "x = 2", parent=2,
                                state={"names": ["name", "x"], "ids": ["e2", "e3"],
                                       "changed": ["x"]}), [e3])
    assert store.entries(["e1", "e3", "nope"]) == {"e1": e1, "e3": e3}
    assert store.known_entry_ids() == {"e1", "e2", "e3"}
    assert store.step(3).state == {"names": ["name", "x"], "ids": ["e2", "e3"], "changed": ["x"]}
    path = store.path
    store.close()
    assert sql(path, "SELECT step, name, value::VARCHAR, changed FROM variables ORDER BY step, name") \
        == [(1, "name", '"ada"', True), (1, "x", "1", True),
            (2, "name", '"ada"', False), (2, "x", "1", False),
            (3, "name", '"ada"', False), (3, "x", "2", True)]
    # a state that recurs is stored once
    assert sql(path, "SELECT count(*) FROM fm_states") == [(2,)]


def test_bulk_appends_read_back_like_one_by_one_appends(tmp_path: Path, make_step) -> None:
    def build(path: Path, bulk: bool) -> None:
        recs, entries = [], []
        for n in range(1, 13):
            e = entry(f"e{n}", "i", n)
            entries.append(e)
            recs.append(make_step(n, f"i = {n}", parent=n - 1 or None,
                                  state={"names": ["i"], "ids": [e["id"]], "changed": ["i"]}))
        store = Store.open(path)
        if bulk:
            store.append_steps(recs, entries)
        else:
            for rec, e in zip(recs, entries):
                store.append_step(rec, [e])
        assert store.last_step == 12
        store.close()

    one, many = tmp_path / "one.duckdb", tmp_path / "many.duckdb"
    build(one, bulk=False)
    build(many, bulk=True)
    for query in ("SELECT * EXCLUDE (seq) FROM steps ORDER BY step",
                  "SELECT * FROM variables ORDER BY step, name",
                  "SELECT step, kind FROM events WHERE step IS NOT NULL ORDER BY seq"):
        assert sql(one, query) == sql(many, query), query
    assert len(sql(many, "SELECT * FROM variables")) == 12


def test_events_and_the_last_of_some_kinds(store: Store) -> None:
    first = store.append_event("kernel_started", payload={"kernel_id": "k1"})
    second = store.append_event("rewind", step=3, payload={"branch": "main"})
    store.append_events([("flow_scheduled", None, "run-1", {"slot": 1.5}),
                         ("signal", None, "run-1", None)])
    assert second > first
    last = store.last_event(["kernel_started", "rewind"])
    assert last is not None and (last["kind"], last["step"], last["seq"]) == ("rewind", 3, second)
    assert store.last_event(["no_such_kind"]) is None
    path = store.path
    store.close()
    assert sql(path, "SELECT kind, run_id, payload->>'slot' FROM events WHERE run_id IS NOT NULL"
                     " ORDER BY seq") == [("flow_scheduled", "run-1", "1.5"), ("signal", "run-1", None)]


def test_unfinished_steps_are_those_whose_latest_record_is_running(store: Store, make_step) -> None:
    store.append_step(make_step(1, "a", "running"))
    store.append_step(make_step(1, "a", "ok"))
    store.append_step(make_step(2, "b", "running"))
    assert [r.step for r in store.unfinished_steps()] == [2]


def test_a_failed_transaction_leaves_nothing_behind(store: Store, make_step) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction():
            store.append_step(make_step(1))
            store.append_event("fork", step=1)
            raise RuntimeError("boom")
    store.append_step(make_step(2))
    path = store.path
    store.close()
    assert sql(path, "SELECT step FROM steps") == [(2,)]
    assert sql(path, "SELECT count(*) FROM fm_events WHERE kind = 'fork'") == [(0,)]


def test_a_copy_is_a_whole_history_that_opens_on_its_own(store: Store, tmp_path: Path,
                                                         make_step) -> None:
    store.append_step(make_step(1, "x = 1"))
    flushed = []
    store.before_copy.append(lambda: flushed.append(True))  # the flow journal's hook
    target = tmp_path / "copy.duckdb"
    store.copy_to(target)
    assert flushed == [True]
    store.append_step(make_step(2, "x = 2"))  # after the copy: not in it
    copy = Store.open(target)
    try:
        assert copy.step(1).code == "x = 1" and copy.step(2) is None
        assert copy.meta("schema_version") == str(SCHEMA_VERSION)
    finally:
        copy.close()


def test_a_file_that_is_not_a_history_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(errors.HistoryError, match="junk.duckdb") as info:
        Store.open(path)
    assert isinstance(info.value, errors.HistoryUnwritable)
    assert "\n" not in str(info.value)


def test_a_step_log_planted_as_a_link_is_refused_and_never_replayed(
        history_file: Path, tmp_path: Path, make_step, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import shutil

    store = Store.open(history_file)
    store.append_step(make_step(1, "mine = 1"))
    store.close()
    other = Store.open(tmp_path / "other" / "h.duckdb")  # a real log with a record step 1 lacks
    other.append_step(make_step(1))
    other.append_step(make_step(2, "injected = 1"))
    planted = tmp_path / "planted.steplog"
    shutil.copy(other.sidecar(".steplog"), planted)
    other.abandon()
    link = Path(str(history_file) + ".steplog")
    os.symlink(planted, link)
    with pytest.raises(errors.HistoryUnwritable, match="history.duckdb.steplog is a symbolic link"):
        Store.open(history_file)
    reader = Store.open(history_file, read_only=True)  # as `fm log` opens it: the replay is refused
    try:
        assert reader.query("SELECT code FROM steps").rows == [("mine = 1",)]
    finally:
        reader.close()
    assert "not a file of yours" in caplog.text
    assert link.is_symlink() and planted.read_bytes()  # left as found
