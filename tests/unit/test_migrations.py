"""Migrations as data: a new history gets every one, an old one is brought
up to date with its records intact, a newer one is refused untouched, and a
read-only open never migrates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from fm_kernel import errors
from fm_kernel.record.migrations import MIGRATIONS
from fm_kernel.record.store import SCHEMA_VERSION, Store

VIEWS = {"steps", "outputs", "variables", "branches", "events", "runs", "run_steps", "tasks",
         "received_events"}
T0 = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)


def _old_history(path: Path, version: int) -> None:
    """A history as a release at schema ``version`` left it, with one step
    whose namespace is recorded the way that version recorded it."""
    conn = duckdb.connect(str(path))
    for n in range(1, version + 1):
        conn.execute(MIGRATIONS[n - 1])
    conn.execute("INSERT INTO fm_meta VALUES ('schema_version', ?)", [str(version)])
    conn.execute("INSERT INTO fm_branch_records VALUES (1, 'main', NULL, NULL, ?)", [T0])
    conn.execute("INSERT INTO fm_step_records (seq, step, branch, kernel_id, code, status,"
                 " started_at, finished_at, duration_ms, outputs) VALUES"
                 " (2, 1, 'main', 'k-old', 'x = 41 + 1', 'ok', ?, ?, 3.0, '[]')", [T0, T0])
    if version >= 2:  # states as JSON on the record, entries by id
        conn.execute("UPDATE fm_step_records SET state = ? WHERE step = 1",
                     [json.dumps({"names": ["x"], "ids": ["e-x"], "changed": ["x"]})])
        conn.execute("INSERT INTO fm_var_entries VALUES ('e-x', 'x', 'int', 28, '42', '42', true,"
                     " NULL, ?)", [json.dumps({"id": "e-x", "name": "x", "value": 42})])
    conn.close()


def _columns(path: Path) -> dict[str, list[tuple[str, str]]]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        rows = conn.execute("SELECT table_name, column_name, data_type FROM information_schema.columns"
                            " ORDER BY table_name, ordinal_position").fetchall()
    finally:
        conn.close()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, typ in rows:
        out.setdefault(table, []).append((column, typ))
    return out


def test_the_schema_version_is_the_number_of_migrations() -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 5
    assert all(isinstance(m, str) and m.strip() for m in MIGRATIONS)


def test_a_new_history_has_every_view(history_file: Path) -> None:
    Store.open(history_file).close()
    assert VIEWS <= set(_columns(history_file))


@pytest.mark.parametrize("version", [1, 3])
def test_an_old_history_is_upgraded_with_its_records(tmp_path: Path, version: int) -> None:
    old, fresh = tmp_path / f"v{version}.duckdb", tmp_path / "fresh.duckdb"
    _old_history(old, version)
    store = Store.open(old)
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    rec = store.step(1)
    assert rec is not None and (rec.code, rec.status, rec.kernel_id) == ("x = 41 + 1", "ok", "k-old")
    assert store.next_step() == 2  # numbering continues from the old records
    if version >= 2:
        assert rec.state == {"names": ["x"], "ids": ["e-x"], "changed": ["x"]}
    store.close()
    Store.open(fresh).close()
    # the upgraded schema is the one a new history gets
    assert _columns(old) == _columns(fresh)
    if version >= 2:
        conn = duckdb.connect(str(old), read_only=True)
        assert conn.execute("SELECT step, name, value::INTEGER, changed FROM variables").fetchall() \
            == [(1, "x", 42, True)]
        conn.close()


def test_a_history_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    _old_history(path, SCHEMA_VERSION)
    conn = duckdb.connect(str(path))
    conn.execute("UPDATE fm_meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.close()
    before = _columns(path)
    with pytest.raises(errors.SchemaTooNew, match=str(path)):
        Store.open(path)
    assert _columns(path) == before


def test_a_read_only_open_refuses_an_old_schema_instead_of_migrating(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    _old_history(path, 3)
    with pytest.raises(errors.HistoryError, match="schema version 3.*upgrade"):
        Store.open(path, read_only=True)
    conn = duckdb.connect(str(path), read_only=True)
    assert conn.execute("SELECT value FROM fm_meta WHERE key = 'schema_version'").fetchall() == [("3",)]
    conn.close()
