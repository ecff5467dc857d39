"""Does the history stay fast when it is big? A history of 100,000 steps and
1,000,000 events, then: `%fm log`'s query, five cookbook queries (docs/sql.md)
through the same path as `%%sql`, and the cost of recording one more cell at
100,000 steps against at 10 steps.

    .venv/bin/python bench/history_scale.py            # 100k steps, 1M events (a few minutes)
    .venv/bin/python bench/history_scale.py --quick    # 10k steps, 100k events

Building. The store's per-cell path writes one row per call (what a kernel
does, ~2-5 ms each here); the script measures that rate on a sample, then
builds the big history through the store's bulk API (append_steps,
append_events, append_branch: columnar, one transaction per batch of 5,000
steps) and reopens it with Store.open so the counters come from the file.

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

from fm_kernel.record import querying
from fm_kernel.record.lineage import step_log
from fm_kernel.record.store import StepRecord, Store, utcnow

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
    EVENTS_PER_STEP * n_steps events through the store's bulk API
    (append_steps / append_events / append_branch), in batches; returns
    seconds taken."""
    import datetime as dt

    t = time.perf_counter()
    store = Store.open(path)  # creates the schema (migrations) as a kernel would
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    batch = 5000
    latest = {j: 0 for j in range(NAMES)}
    loss_at = 0
    for lo in range(1, n_steps + 1, batch):
        recs, entries, events = [], [], []
        for i in range(lo, min(lo + batch, n_steps + 1)):
            j = i % NAMES
            latest[j] = i
            entries.append({"id": f"v{j}-{i}", "name": f"v{j}", "type": "int", "size_bytes": 28,
                            "summary": str(i), "value": i, "restorable": True, "reason": None})
            changed = [f"v{j}"]
            if i % 10 == 0:
                loss_at = i
                loss = round(1.0 / (1 + i / 100.0), 4)
                entries.append({"id": f"loss-{i}", "name": "loss", "type": "float", "size_bytes": 24,
                                "summary": str(loss), "value": loss, "restorable": True, "reason": None})
                changed.append("loss")
            block = i // STEPS_PER_KERNEL
            branch = f"exp{block}" if block % FORK_EVERY == FORK_EVERY - 1 else "main"
            started = t0 + dt.timedelta(seconds=i * 3)
            ms = ((i * 7919) % 20000) / 10.0
            outputs = [{"position": 0, "output_type": "stream", "mime": "text/plain",
                        "content": f"{i}\n", "meta": {"name": "stdout"}}]
            if i % 20 == 0:
                outputs.append({"position": 1, "output_type": "stream", "mime": "text/plain",
                                "content": f"warning: slow batch {i}\n", "meta": {"name": "stderr"}})
            elif i % 100 == 1:
                outputs.append({"position": 1, "output_type": "display_data", "mime": "image/png",
                                "content": "iVBORw0KGgo" * 300, "meta": {}})
            error = i % 50 == 0
            recs.append(StepRecord(
                step=i, branch=branch, parent=i - 1 if i > 1 else None,
                kernel_id=f"kernel-{block}", cell_id=f"cell-{i % 40}",
                execution_count=i % STEPS_PER_KERNEL + 1,
                code=f"v{j} = model.step(batch={i % 500})\nprint(v{j})",
                status="error" if error else "ok", started_at=started,
                finished_at=started + dt.timedelta(milliseconds=ms), duration_ms=ms,
                error_name="ValueError" if error else None,
                error_value=f"bad batch {i}" if error else None,
                traceback=["Traceback (most recent call last):", "ValueError: bad batch"] if error else None,
                outputs=outputs,
                state={"names": [f"v{k}" for k in range(NAMES)] + ["loss"],
                       "ids": [f"v{k}-{latest[k]}" for k in range(NAMES)] + [f"loss-{loss_at}"],
                       "changed": changed}))
            for e in range(EVENTS_PER_STEP):
                if e == 0 and i % STEPS_PER_KERNEL == 1:
                    kind = "kernel_started"
                elif e == 0 and i % STEPS_PER_KERNEL == 0:
                    kind = "kernel_stopped"
                else:
                    kind = ("timer_fired", "signal", "callback")[e % 3]
                events.append((kind, i, f"run-{i % 997}" if e else None,
                               {"n": e, "kernel_id": f"kernel-{block}"}))
            if i % STEPS_PER_KERNEL == STEPS_PER_KERNEL - 1 and (block + 1) % FORK_EVERY == FORK_EVERY - 1:
                store.append_branch(f"exp{block + 1}", i, i)
        for k in range(NAMES):  # the first state names v<k>-0 before v<k> is written
            entries.append({"id": f"v{k}-0", "name": f"v{k}", "type": "int", "size_bytes": 28,
                            "summary": "0", "value": 0, "restorable": True, "reason": None}) if lo == 1 else None
        if lo == 1:
            entries.append({"id": "loss-0", "name": "loss", "type": "float", "size_bytes": 24,
                            "summary": "1.0", "value": 1.0, "restorable": True, "reason": None})
        store.append_steps(recs, entries)
        store.append_events(events)
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
        base_ms, res = median_ms(lambda: big.steps(branch="main", limit=20), a.runs)
        rows.append(("baseline: store.steps(branch='main', limit=20)", base_ms,
                     f"{len(res.rows)} rows", "PASS" if base_ms <= QUERY_TARGET_MS else "FAIL"))
        # %fm log walks HEAD's ancestry over the whole step graph (record/lineage.py);
        # fm log sends the same SQL through the user-SQL door
        for name, run in (("%fm log (lineage.step_log, -n 20)", big.query),
                          ("fm log -n 20 (through querying.run)",
                           lambda sql, params: querying.run(big, sql, params))):
            ms, log = median_ms(lambda run=run: step_log(run, limit=20), a.runs)
            rows.append((f"{name}, {ms / base_ms:.1f}x baseline", ms, f"{len(log.rows)} rows",
                         "PASS" if ms <= QUERY_TARGET_MS else "FAIL"))
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
