"""Does the history stay fast when it is big? A history of 100,000 steps and
1,000,000 events, then: `%fm log`'s query, five cookbook queries (docs/sql.md)
through the same path as `%%sql`, and the cost of recording one more cell at
100,000 steps against at 10 steps.

    .venv/bin/python bench/history_scale.py            # 100k steps, 1M events (a few minutes)
    .venv/bin/python bench/history_scale.py --quick    # 10k steps, 100k events

Building. Store's API writes one row per call: append_step commits on its
own cursor, so `with store.transaction():` does not batch it (and
append_step with new variable entries opens its own transaction, which
cannot nest); append_event does batch inside a transaction. The script
measures those rates on a sample and prints how long a build through the API
would take. The big history is then written in bulk, inside
`store.transaction()`, with INSERT ... SELECT over the store's own tables (the
same columns append_step/append_event/append_branch write), and reopened with
Store.open so the store's step and seq counters come from the file.

Targets: each query median <= 200 ms; append_step at 100k steps <= 1.2x
its time at 10 steps (median of 200, interleaved between the two histories).
Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import duckdb

from fm_kernel import querying
from fm_kernel.store import StepRecord, Store, utcnow

QUERY_TARGET_MS = 200.0
APPEND_TARGET_RATIO = 1.2
EVENTS_PER_STEP = 10
NAMES = 20  # variables v0..v19 plus `loss` in every state
STEPS_PER_KERNEL = 1000
FORK_EVERY = 10  # every 10th block of 1000 steps runs on a branch of its own

# Five cookbook queries, as written in docs/sql.md (the lineage one starts
# from the latest step and goes back 50).
COOKBOOK = {
    "slowest cells": """
SELECT step, branch, round(duration_ms) AS ms, left(code, 60) AS code
FROM steps
WHERE duration_ms IS NOT NULL
ORDER BY duration_ms DESC
LIMIT 10""",
    "error rate by hour": """
SELECT date_trunc('hour', started_at) AS hour,
       count(*) AS cells,
       count(*) FILTER (WHERE status = 'error') AS errors,
       round(100.0 * count(*) FILTER (WHERE status = 'error') / count(*), 1) AS error_pct
FROM steps
GROUP BY hour
ORDER BY hour""",
    "value of a variable over steps": """
SELECT step, value::DOUBLE AS loss
FROM variables
WHERE name = 'loss' AND changed
ORDER BY step""",
    "cells that printed to stderr": """
SELECT o.step, o.content AS stderr, left(s.code, 60) AS code
FROM outputs o JOIN steps s USING (step)
WHERE o.output_type = 'stream' AND o.meta->>'name' = 'stderr'
ORDER BY o.step""",
    "lineage of a step (50 back)": """
WITH RECURSIVE lineage(step, parent, depth) AS (
    SELECT step, parent, 0 FROM steps WHERE step = (SELECT max(step) FROM steps)
    UNION ALL
    SELECT s.step, s.parent, l.depth + 1
    FROM steps s JOIN lineage l ON s.step = l.parent
    WHERE l.depth < 50
)
SELECT l.depth, l.step, s.branch, left(s.code, 50) AS code
FROM lineage l JOIN steps s USING (step)
ORDER BY l.depth""",
}


# -- a realistic cell record ----------------------------------------------------

def state_of(i: int) -> dict[str, Any]:
    """Step i changes v{i % 20}; every 10th step also changes `loss`."""
    names = [f"v{j}" for j in range(NAMES)] + ["loss"]
    ids = [f"v{j}-{max(0, i - ((i - j) % NAMES))}" for j in range(NAMES)] + [f"loss-{i - i % 10}"]
    changed = [f"v{i % NAMES}"] + (["loss"] if i % 10 == 0 else [])
    return {"names": names, "ids": ids, "changed": changed}


def record(i: int, kernel_id: str = "bench" * 6 + "00") -> tuple[StepRecord, list[dict[str, Any]]]:
    now = utcnow()
    rec = StepRecord(
        step=i, branch="main", parent=i - 1 or None, kernel_id=kernel_id, cell_id=f"cell-{i % 40}",
        execution_count=i, code=f"v{i % NAMES} = model.step(batch={i})\nprint(v{i % NAMES})",
        status="ok", started_at=now, finished_at=now, duration_ms=12.5,
        outputs=[{"position": 0, "output_type": "stream", "mime": "text/plain",
                  "content": f"{i}\n", "meta": {"name": "stdout"}}],
        state=state_of(i),
    )
    entry = {"id": f"v{i % NAMES}-{i}", "name": f"v{i % NAMES}", "type": "int", "size_bytes": 28,
             "summary": str(i), "value": i, "restorable": True, "reason": None}
    return rec, [entry]


# -- building -------------------------------------------------------------------

def api_rates(root: Path, n_steps: int = 300, n_events: int = 3000) -> dict[str, float]:
    """Per-row cost of building through Store's API, on a scratch history."""
    store = Store.open(root / "api.duckdb")
    try:
        t = time.perf_counter()
        for i in range(1, n_steps + 1):
            store.append_step(*record(i))
        step_ms = (time.perf_counter() - t) / n_steps * 1e3
        t = time.perf_counter()
        for i in range(n_events):
            store.append_event("timer_fired", step=i % n_steps + 1, payload={"n": i})
        event_ms = (time.perf_counter() - t) / n_events * 1e3
        t = time.perf_counter()
        with store.transaction():
            for i in range(n_events):
                store.append_event("timer_fired", step=i % n_steps + 1, payload={"n": i})
        event_txn_ms = (time.perf_counter() - t) / n_events * 1e3
    finally:
        store.close()
    return {"append_step": step_ms, "append_event": event_ms, "append_event_txn": event_txn_ms}


def build(path: Path, n_steps: int) -> float:
    """Write n_steps steps (with states, outputs, entries, branches) and
    EVENTS_PER_STEP * n_steps events in bulk; returns seconds taken."""
    t = time.perf_counter()
    store = Store.open(path)  # creates the schema (migrations) as a kernel would
    base = (store.last_step, 0)
    assert base == (0, 0), base
    seq0 = 10  # past the seq of the migration's own rows
    per = EVENTS_PER_STEP + 1
    with store.transaction() as c:
        # Steps: one final record each; seq leaves room for that step's events.
        c.execute(f"""
        INSERT INTO fm_step_records
        SELECT {seq0} + (i - 1) * {per} + {EVENTS_PER_STEP} AS seq,
               i AS step,
               CASE WHEN (i // {STEPS_PER_KERNEL}) % {FORK_EVERY} = {FORK_EVERY - 1}
                    THEN 'exp' || (i // {STEPS_PER_KERNEL}) ELSE 'main' END AS branch,
               CASE WHEN i = 1 THEN NULL ELSE i - 1 END AS parent,
               md5('kernel' || (i // {STEPS_PER_KERNEL})) AS kernel_id,
               'cell-' || (i % 40) AS cell_id,
               (i % {STEPS_PER_KERNEL}) + 1 AS execution_count,
               'v' || (i % {NAMES}) || ' = model.step(batch=' || (i % 500) || ')' || chr(10)
                   || 'print(v' || (i % {NAMES}) || ')' AS code,
               CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END AS status,
               TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i * 3) AS started_at,
               TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i * 3)
                   + to_microseconds(((i * 7919) % 20000) * 100) AS finished_at,
               ((i * 7919) % 20000) / 10.0 AS duration_ms,
               CASE WHEN i % 50 = 0 THEN 'ValueError' END AS error_name,
               CASE WHEN i % 50 = 0 THEN 'bad batch ' || i END AS error_value,
               CASE WHEN i % 50 = 0 THEN '["Traceback (most recent call last):", "ValueError: bad batch"]' END::JSON,
               to_json(list_value(
                   {{'position': 0, 'output_type': 'stream', 'mime': 'text/plain',
                     'content': i || chr(10), 'meta': '{{"name":"stdout"}}'::JSON}}
               ) || CASE WHEN i % 20 = 0 THEN list_value(
                   {{'position': 1, 'output_type': 'stream', 'mime': 'text/plain',
                     'content': 'warning: slow batch ' || i || chr(10), 'meta': '{{"name":"stderr"}}'::JSON}})
                  WHEN i % 100 = 1 THEN list_value(
                   {{'position': 1, 'output_type': 'display_data', 'mime': 'image/png',
                     'content': repeat('iVBORw0KGgo', 300), 'meta': '{{}}'::JSON}})
                  ELSE [] END) AS outputs,
               to_json({{
                   'names': list_transform(range({NAMES}), lambda j: 'v' || j) || ['loss'],
                   'ids': list_transform(range({NAMES}),
                              lambda j: 'v' || j || '-' || greatest(0, i - (((i - j) % {NAMES}) + {NAMES}) % {NAMES}))
                          || ['loss-' || (i - i % 10)],
                   'changed': ['v' || (i % {NAMES})] || CASE WHEN i % 10 = 0 THEN ['loss'] ELSE [] END
               }}) AS state
        FROM range(1, {n_steps} + 1) r(i)
        """)
        # Entries: v{j}-{s} for each change, v{j}-0 and loss-{s} as named by the states.
        c.execute(f"""
        INSERT INTO fm_var_entries
        SELECT id, name, 'int', 28, CAST(v AS VARCHAR), CAST(v AS JSON), true, NULL,
               json_object('name', name, 'type', 'int')
        FROM (
            SELECT 'v' || (i % {NAMES}) || '-' || i AS id, 'v' || (i % {NAMES}) AS name, i AS v
            FROM range(1, {n_steps} + 1) r(i)
            UNION ALL SELECT 'v' || j || '-0', 'v' || j, 0 FROM range({NAMES}) r(j)
        )
        UNION ALL
        SELECT 'loss-' || i, 'loss', 'float', 24, CAST(round(1.0 / (1 + i / 100.0), 4) AS VARCHAR),
               CAST(round(1.0 / (1 + i / 100.0), 4) AS JSON), true, NULL, '{{"name": "loss"}}'::JSON
        FROM range(0, {n_steps} + 1, 10) r(i)
        """)
        # Events: kernel starts/stops at block edges, the rest flow-like traffic.
        c.execute(f"""
        INSERT INTO fm_events
        SELECT {seq0} + (i - 1) * {per} + e AS seq,
               TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i * 3) + to_microseconds(e * 1000),
               CASE WHEN e = 0 AND i % {STEPS_PER_KERNEL} = 1 THEN 'kernel_started'
                    WHEN e = 0 AND i % {STEPS_PER_KERNEL} = 0 THEN 'kernel_stopped'
                    WHEN e % 3 = 0 THEN 'timer_fired'
                    WHEN e % 3 = 1 THEN 'signal'
                    ELSE 'callback' END AS kind,
               i AS step,
               CASE WHEN e > 0 THEN 'run-' || (i % 997) END AS run_id,
               json_object('n', e, 'kernel_id', md5('kernel' || (i // {STEPS_PER_KERNEL}))) AS payload
        FROM range(1, {n_steps} + 1) r(i), range({EVENTS_PER_STEP}) q(e)
        """)
        c.execute(f"""
        INSERT INTO fm_branch_records
        SELECT {seq0} + (b * {STEPS_PER_KERNEL} - 1) * {per} + {EVENTS_PER_STEP} - 1,
               'exp' || b, b * {STEPS_PER_KERNEL} - 1, b * {STEPS_PER_KERNEL} - 1,
               TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(b * {STEPS_PER_KERNEL} * 3)
        FROM range({FORK_EVERY - 1}, {n_steps} // {STEPS_PER_KERNEL} + 1, {FORK_EVERY}) r(b)
        WHERE b * {STEPS_PER_KERNEL} <= {n_steps}
        """)
    store.query("CHECKPOINT")
    store.close()
    return time.perf_counter() - t


# -- measuring ------------------------------------------------------------------

def median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    out = fn()  # warm-up (also the result shown)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def append_medians(small: Store, big: Store, n: int) -> tuple[float, float]:
    """Median append_step of a realistic record (one new variable entry),
    alternating between the two histories so noise falls on both."""
    ts: dict[int, list[float]] = {id(small): [], id(big): []}
    for k in range(n):
        for store in ((small, big) if k % 2 == 0 else (big, small)):
            rec, entries = record(store.last_step + 1)
            t = time.perf_counter()
            store.append_step(rec, entries)
            ts[id(store)].append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts[id(small)]), statistics.median(ts[id(big)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10,000 steps and 100,000 events")
    p.add_argument("--runs", type=int, default=7, help="timed runs per query (median)")
    p.add_argument("--appends", type=int, default=200, help="appends per history (median)")
    p.add_argument("--keep", metavar="DIR", help="build in DIR and keep it")
    a = p.parse_args(argv)
    n_steps = 10_000 if a.quick else 100_000

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fm-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {platform.machine()}, python {platform.python_version()}, "
              f"duckdb {duckdb.__version__}")
        rates = api_rates(root)
        est_api = n_steps * rates["append_step"] / 1e3 + \
            n_steps * EVENTS_PER_STEP * rates["append_event_txn"] / 1e3
        print(f"through the API, one row per call: append_step {rates['append_step']:.2f} ms "
              f"(with one new entry), append_event {rates['append_event']:.2f} ms "
              f"({rates['append_event_txn']:.2f} ms inside store.transaction()); "
              f"building {n_steps:,} steps + {n_steps * EVENTS_PER_STEP:,} events that way "
              f"would take ~{est_api / 60:.0f} min")

        big_path = root / "big.duckdb"
        if big_path.exists():
            big_path.unlink()
        secs = build(big_path, n_steps)
        size = big_path.stat().st_size
        print(f"bulk build of {n_steps:,} steps, {n_steps * EVENTS_PER_STEP:,} events: "
              f"{secs:.1f} s, {size / 2**20:.0f} MiB")

        big = Store.open(big_path)
        counts = big.query("SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM fm_events),"
                           " (SELECT count(*) FROM fm_var_entries)").rows[0]
        print(f"history: {counts[0]:,} steps, {counts[1]:,} events, {counts[2]:,} variable entries")

        rows: list[tuple[str, float, str, str]] = []
        ms, res = median_ms(lambda: big.steps(branch="main", limit=20), a.runs)
        rows.append(("%fm log (store.steps(branch='main', limit=20))", ms,
                     f"{len(res.rows)} rows", "PASS" if ms <= QUERY_TARGET_MS else "FAIL"))
        for name, sql in COOKBOOK.items():
            ms, res = median_ms(lambda sql=sql: querying.run(big, sql), a.runs)
            rows.append((f"cookbook: {name}", ms, f"{len(res.rows)} rows",
                         "PASS" if ms <= QUERY_TARGET_MS else "FAIL"))

        small_path = root / "small.duckdb"
        if small_path.exists():
            small_path.unlink()
        small = Store.open(small_path)
        for i in range(1, 11):
            small.append_step(*record(i))
        at10, atbig = append_medians(small, big, a.appends)
        ratio = atbig / at10
        small.close()
        big.close()

        w = max(len(r[0]) for r in rows) + 2
        print()
        print(f"{'measure'.ljust(w)}{'median':>11}  {'result':<12}target")
        print("-" * (w + 40))
        for name, ms, info, verdict in rows:
            print(f"{name.ljust(w)}{ms:>8.1f} ms  {info:<12}{verdict} (<= {QUERY_TARGET_MS:.0f} ms)")
        print(f"{'append_step at 10 steps'.ljust(w)}{at10:>8.2f} ms")
        print(f"{f'append_step at {n_steps:,} steps'.ljust(w)}{atbig:>8.2f} ms  "
              f"{f'{ratio:.2f}x':<12}{'PASS' if ratio <= APPEND_TARGET_RATIO else 'FAIL'} "
              f"(<= {APPEND_TARGET_RATIO}x)")
        failed = any(r[3] == "FAIL" for r in rows) or ratio > APPEND_TARGET_RATIO
        return 1 if failed else 0
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
