"""The step log's batches go into DuckDB as one JSON document per table
(bulk._json_rows); what lands must be what the columnar path (Arrow) stores
for the same records: types, NULLs, quotes and non-ASCII text, JSON columns,
lists, timestamps with their zone and microseconds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fm_kernel.record.store import Store

TRICKY = 'quote " backslash \\ newline \n tab \t é ✓ \U0001F600'


def _records(make_step) -> tuple[list, list]:
    recs, entries = [], []
    for i in range(1, 4):
        r = make_step(i, code=f"x = {TRICKY!r}  # {i}", parent=i - 1 or None,
                      state={"names": ["x", "y"], "ids": [f"e{i}", "ey"], "changed": ["x"]},
                      outputs=[{"position": 0, "output_type": "stream", "mime": "text/plain",
                                "content": TRICKY, "meta": {"name": "stdout"}}])
        r.started_at = r.started_at.replace(microsecond=123456 + i)
        if i == 2:  # a failed cell: traceback and error columns, no duration
            r.status, r.error_name, r.error_value = "error", "ValueError", TRICKY
            r.traceback, r.duration_ms, r.finished_at = [TRICKY, "line 2"], None, None
        recs.append(r)
        entries.append({"id": f"e{i}", "name": "x", "type": "str", "size_bytes": 10 ** 12 + i,
                        "summary": TRICKY, "value": None if i == 3 else {"k": [i, 0.1, TRICKY]},
                        "restorable": i != 2, "reason": None if i != 2 else TRICKY,
                        "ref": "", "fp": f"fp{i}", "tracked": True})
    return recs, entries


def _stored(path: Path, make_step, columnar: bool) -> dict[str, list]:
    store = Store.open(path)
    try:
        recs, entries = _records(make_step)
        store.append_steps(recs, entries, seqs=[10, 11, 12], columnar=columnar)
        return {t: store.query(f"SELECT * FROM {t} ORDER BY 1").rows
                for t in ("fm_step_records", "fm_var_entries", "fm_states")}
    finally:
        store.close()


def test_json_batches_store_what_the_columnar_path_stores(tmp_path: Path, make_step) -> None:
    arrow = _stored(tmp_path / "a" / "h.duckdb", make_step, columnar=True)
    json_ = _stored(tmp_path / "j" / "h.duckdb", make_step, columnar=False)
    assert json_ == arrow
    steps = json_["fm_step_records"]
    assert len(steps) == 3 and TRICKY in steps[1]  # the error value, byte for byte
    started = [v for v in steps[0] if isinstance(v, dt.datetime)][0]
    assert started.microsecond == 123457 and started.utcoffset() == dt.timedelta(0)
