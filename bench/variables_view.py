"""What the `variables` view costs over states stored as changes
(migration 13) against migration 12's SQL over the same file, and against
the same states stored whole in the same file (what the view read before
changes, migrations 4-11: one unnest a state). A history of 100,000 steps x 21 names (bench/history_scale.py's
build: every tenth state whole, the others changes of one or two names);
four queries: a count of the whole view, `WHERE step = N`, `WHERE name =`,
and the cookbook "value of a variable over steps". Rows are checked equal
across the three before anything is timed.

    .venv/bin/python bench/variables_view.py            # 100k steps
    .venv/bin/python bench/variables_view.py --quick    # 10k steps
    .venv/bin/python bench/variables_view.py --threads 1

Target: the full count <= 1.5x its cost over whole states, and each
filtered query no slower than under migration 12 (1.1x allowed for noise).
Exit status 1 if missed. No kernel: the history is built through the
store's bulk API and read through DuckDB as `fm sql` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history_scale import build  # noqa: E402

from fm_kernel.record.migrations import MIGRATIONS  # noqa: E402

FULL_TARGET, FILTER_TARGET = 1.5, 1.1
QUERIES = {
    "count(*) of the view": "SELECT count(*) FROM {v}",
    "WHERE step = N": "SELECT count(*) FROM {v} WHERE step = {mid}",
    "WHERE name = 'loss'": "SELECT count(*) FROM {v} WHERE name = 'loss'",
    "cookbook: value over steps": "SELECT step, value FROM {v} WHERE name = 'loss' AND changed ORDER BY step",
}
# The same states stored whole; migration 6's view reads them (as 4-11 did).
WHOLE = r"""
CREATE TABLE whole_states AS
SELECT s.id,
       list_concat(s.names, [n FOR n IN b.names
                             IF NOT list_contains(list_concat(s.names, coalesce(s.removed, [])), n)]) AS names,
       list_concat(s.ids, [b.ids[i] FOR n, i IN b.names
                           IF NOT list_contains(list_concat(s.names, coalesce(s.removed, [])), n)]) AS ids
FROM fm_states s JOIN fm_states b ON b.id = s.base
UNION ALL SELECT id, names, ids FROM fm_states WHERE base IS NULL;
"""


def view_sql(migration: str) -> str:
    """The SELECT of the `variables` view a migration defines."""
    head = "CREATE OR REPLACE VIEW variables AS"
    return migration[migration.index(head) + len(head):].strip().rstrip(";")


def prepare(con: duckdb.DuckDBPyConnection) -> list[str]:
    con.execute(WHOLE)
    con.execute("CHECKPOINT")  # a table in the file, as the whole states were
    whole = view_sql(MIGRATIONS[5]).replace("FROM fm_states", "FROM whole_states")
    con.execute(f"CREATE TEMP VIEW var_whole AS {whole}")
    con.execute(f"CREATE TEMP VIEW var_m12 AS {view_sql(MIGRATIONS[11])}")
    con.execute(f"CREATE TEMP VIEW var_m13 AS {view_sql(MIGRATIONS[12])}")
    names = ["var_whole", "var_m12", "var_m13"]
    for v in names[1:]:  # the same rows (the JSON value compared as text)
        diff = con.execute(
            f"SELECT count(*) FROM ((SELECT * REPLACE (CAST(value AS VARCHAR) AS value) FROM var_whole "
            f"EXCEPT ALL SELECT * REPLACE (CAST(value AS VARCHAR) AS value) FROM {v}) UNION ALL "
            f"(SELECT * REPLACE (CAST(value AS VARCHAR) AS value) FROM {v} "
            f"EXCEPT ALL SELECT * REPLACE (CAST(value AS VARCHAR) AS value) FROM var_whole))").fetchone()[0]
        if diff:
            raise SystemExit(f"{v} differs from the whole-state view in {diff} rows")
    return names


def median_ms(con: duckdb.DuckDBPyConnection, sql: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 steps instead of 100,000")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per query and view (median)")
    ap.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's)")
    a = ap.parse_args(argv)
    steps = 10_000 if a.quick else 100_000
    tmp = Path(tempfile.mkdtemp(prefix="fm-bench-variables-"))
    try:
        path = tmp / "h.duckdb"
        print(f"building {steps:,} steps: {build(path, steps):.1f} s")
        con = duckdb.connect(str(path))  # a bench copy: the whole states are written beside
        if a.threads:
            con.execute(f"SET threads = {a.threads}")
        views = prepare(con)
        print(f"load average {os.getloadavg()[0]:.2f}; threads "
              f"{con.execute('SELECT current_setting(' + repr('threads') + ')').fetchone()[0]}")
        print(f"{'query (median ms)':30} {'whole':>8} {'m12':>8} {'m13':>8}  m13/whole  m13/m12")
        ok = True
        for label, q in QUERIES.items():
            # interleaved, so load changes fall on all three alike
            ms = {v: [] for v in views}
            for _ in range(3):
                for v in views:
                    ms[v].append(median_ms(con, q.format(v=v, mid=steps // 2 + 321), a.runs))
            w, m12, m13 = (statistics.median(ms[v]) for v in views)
            full = label.startswith("count")
            passed = m13 <= FULL_TARGET * w if full else m13 <= FILTER_TARGET * m12
            ok &= passed
            print(f"{label:30} {w:8.1f} {m12:8.1f} {m13:8.1f}  {m13 / w:8.2f}x {m13 / m12:7.2f}x"
                  f"  {'PASS' if passed else 'FAIL'}")
        print(f"load average {os.getloadavg()[0]:.2f}")
        con.close()
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
