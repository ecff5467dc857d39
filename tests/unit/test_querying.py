"""User SQL as docs/sql.md promises it, in every entry point (they all call
querying.run): SELECTs over the views run, with `?` parameters, CTEs and
frame('df', STEP); anything that would write or reach outside the history
is refused before it runs, with one line that says so."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fm_kernel.errors import SQLError, UsageError
from fm_kernel.record import querying
from fm_kernel.record.store import Store


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, make_step) -> Iterator[Store]:
    # One history for the module: every query here only reads (or is refused).
    store = Store.open(tmp_path_factory.mktemp("querying") / "history.duckdb")
    store.append_step(make_step(1, "x = 1"))
    store.append_step(make_step(2, "1/0", "error", parent=1, error_name="ZeroDivisionError",
                                error_value="division by zero"))
    store.append_step(make_step(3, "y = x + 1", parent=2))
    yield store
    store.close()


def rows(store: Store, sql: str, params=(), **kw) -> list[tuple]:
    return [tuple(r) for r in querying.run(store, sql, params, **kw).rows]


def test_a_select_over_the_views_runs(recorded: Store) -> None:
    res = querying.run(recorded, "SELECT step, status, code FROM steps ORDER BY step")
    assert res.columns == ["step", "status", "code"]
    assert [tuple(r) for r in res.rows] == [(1, "ok", "x = 1"), (2, "error", "1/0"),
                                            (3, "ok", "y = x + 1")]


def test_parameters_ctes_joins_and_recursion_are_allowed(recorded: Store) -> None:
    assert rows(recorded, "SELECT step FROM steps WHERE status = ? AND step > ?", ["error", 0]) \
        == [(2,)]
    assert rows(recorded, "WITH e AS (SELECT step FROM steps WHERE status = 'error')"
                          " SELECT count(*) FROM e JOIN steps USING (step)") == [(1,)]
    lineage = """
        WITH RECURSIVE lineage(step, parent, depth) AS (
            SELECT step, parent, 0 FROM steps WHERE step = (SELECT max(step) FROM steps)
            UNION ALL
            SELECT s.step, s.parent, l.depth + 1 FROM steps s JOIN lineage l ON s.step = l.parent
        ) SELECT step FROM lineage ORDER BY depth"""
    assert rows(recorded, lineage) == [(3,), (2,), (1,)]
    assert rows(recorded, 'SELECT kind, count(*) FROM events WHERE "at" IS NOT NULL'
                          " AND kind LIKE 'step_%' GROUP BY kind ORDER BY kind") \
        == [("step_error", 1), ("step_ok", 2)]
    assert rows(recorded, "SELECT count(*) FROM runs") == [(0,)]  # empty until flows are used


@pytest.mark.parametrize("sql", [
    "INSERT INTO fm_events VALUES (1, now(), 'x', NULL, NULL, NULL)",
    "DELETE FROM steps",
    "UPDATE fm_step_records SET code = ''",
    "CREATE TABLE t AS SELECT 1",
    "DROP VIEW steps",
    "ALTER TABLE fm_meta ADD COLUMN c INT",
])
def test_writes_are_refused_before_they_run(recorded: Store, sql: str) -> None:
    with pytest.raises(SQLError, match="the history is read-only"):
        querying.run(recorded, sql)
    assert rows(recorded, "SELECT count(*) FROM steps") == [(3,)]


@pytest.mark.parametrize("sql", [
    "ATTACH '/tmp/other.duckdb' AS o",
    "COPY (SELECT * FROM steps) TO '/tmp/steps.csv'",
    "SET threads = 8",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT getenv('HOME')",
    "SELECT * FROM fm_events",   # the tables under the views are not the interface
])
def test_what_reaches_outside_the_history_is_refused(recorded: Store, sql: str) -> None:
    with pytest.raises(SQLError) as info:
        querying.run(recorded, sql)
    assert "\n" not in str(info.value) and str(info.value)


def test_one_statement_at_a_time(recorded: Store) -> None:
    with pytest.raises(SQLError, match=r"one (statement )?at a time") as info:
        querying.run(recorded, "SELECT 1; SELECT 2")
    assert "2" in str(info.value)  # says how many it was given


def test_a_failing_query_is_one_line_naming_the_problem(recorded: Store) -> None:
    with pytest.raises(SQLError) as info:
        querying.run(recorded, "SELECT no_such_column FROM steps")
    assert "no_such_column" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SQLError) as info:
        querying.run(recorded, "SELEC step FROM steps")
    assert "\n" not in str(info.value)
    assert issubclass(SQLError, UsageError)


def test_frame_reads_a_past_dataframe_through_the_resolver(recorded: Store, tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []
    files = {}
    for name, step, values in (("df", 1, [1, 2, 3]), ("it's", 3, [10])):
        files[(name, step)] = tmp_path / f"{len(files)}.parquet"
        pq.write_table(pa.table({"k": list(range(len(values))), "v": values}), files[(name, step)])

    def resolve(name: str, step: int) -> Path:
        calls.append((name, step))
        return files[(name, step)]

    assert rows(recorded, "SELECT sum(v) FROM frame('df', 1)", frames=resolve) == [(6,)]
    assert rows(recorded, "SELECT a.v, b.v FROM frame('df', 1) a JOIN frame('it''s', 3) b"
                          " USING (k)", frames=resolve) == [(1, 10)]
    assert calls[0] == ("df", 1) and ("it's", 3) in calls
    assert rows(recorded, "SELECT count(*) FROM frame('df', 1) JOIN steps ON steps.step = v",
                frames=resolve) == [(3,)]


def test_frame_needs_literal_arguments_and_a_state_history(recorded: Store) -> None:
    with pytest.raises(SQLError, match="frame"):
        querying.run(recorded, "SELECT * FROM frame(code, step)", frames=lambda n, s: Path("/nope"))
    with pytest.raises(SQLError, match="needs the state history"):
        querying.run(recorded, "SELECT * FROM frame('df', 1)", frames=None)
