"""How a cell's outputs become rows of the `outputs` view and back, which
cells are history queries rather than steps, and the in-flight marker that
lets the next kernel name the cell a kill -9 cut short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fm_kernel.record.recorder import (
    InflightMarker, flatten_outputs, is_history_query, recover_interrupted, unflatten_outputs,
)
from fm_kernel.record.store import Store

# One of each output kind a notebook can hold, as nbformat v4 writes them.
OUTPUTS = [
    {"output_type": "stream", "name": "stdout", "text": "hello\nworld\n"},
    {"output_type": "stream", "name": "stderr", "text": "careful\n"},
    {"output_type": "execute_result", "execution_count": 3,
     "data": {"text/plain": "42", "text/html": "<b>42</b>"}, "metadata": {}},
    {"output_type": "display_data",
     "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
     "metadata": {"image/png": {"width": 640, "height": 480}}},
    {"output_type": "display_data", "data": {"application/json": {"a": [1, 2]}}, "metadata": {},
     "transient": {"display_id": "d-1"}},
    {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": ["tb 1", "tb 2"]},
    {"output_type": "clear_output", "wait": True},
]


def _wire(outputs: list[dict]) -> list[dict]:
    """The shape OutputTap hands flatten_outputs (display_id at top level)."""
    out = []
    for o in outputs:
        o = dict(o)
        if "transient" in o:
            o["display_id"] = o.pop("transient")["display_id"]
        out.append(o)
    return out


def test_flatten_gives_one_row_per_output_and_mime_type() -> None:
    rows = flatten_outputs(_wire(OUTPUTS))
    assert [(r["position"], r["output_type"], r["mime"]) for r in rows] == [
        (0, "stream", "text/plain"),
        (1, "stream", "text/plain"),
        (2, "execute_result", "text/plain"),
        (2, "execute_result", "text/html"),
        (3, "display_data", "image/png"),
        (3, "display_data", "text/plain"),
        (4, "display_data", "application/json"),
        (5, "error", "application/vnd.jupyter.error+json"),
        (6, "clear_output", None),
    ]
    assert rows[0]["meta"] == {"name": "stdout"} and rows[1]["meta"] == {"name": "stderr"}
    assert rows[2]["meta"] == {"execution_count": 3}
    assert rows[4]["meta"]["metadata"] == {"width": 640, "height": 480}
    assert json.loads(rows[6]["content"]) == {"a": [1, 2]}  # JSON MIME types as JSON text
    assert rows[6]["meta"]["display_id"] == "d-1"
    assert json.loads(rows[7]["content"]) == {"ename": "ValueError", "evalue": "bad",
                                              "traceback": ["tb 1", "tb 2"]}


def test_unflatten_gives_back_the_notebook_outputs() -> None:
    # meta as the view returns it: JSON text
    rows = [{**r, "meta": json.dumps(r["meta"])} for r in flatten_outputs(_wire(OUTPUTS))]
    assert unflatten_outputs(rows) == OUTPUTS


def test_unflatten_orders_by_position_whatever_the_row_order() -> None:
    rows = flatten_outputs([{"output_type": "stream", "name": "stdout", "text": "a"},
                            {"output_type": "stream", "name": "stdout", "text": "b"}])
    assert [o["text"] for o in unflatten_outputs(rows[::-1])] == ["a", "b"]


@pytest.mark.parametrize("code, query", [
    ("%fm log", True),
    ("  %fm log --all\n%sql SELECT 1", True),
    ("%%sql\nSELECT * FROM steps", True),
    ("%%sql -o slow\nSELECT * FROM steps", False),   # -o NAME writes the namespace
    ("%sql -o n SELECT count(*) AS n FROM steps", False),
    ("%fm log\nx = 1", False),
    ("x = 1", False),
    ("", False),
    ("   \n  ", False),
])
def test_only_cells_that_just_look_at_the_history_are_not_steps(code: str, query: bool) -> None:
    assert is_history_query(code) is query


def test_inflight_marker_round_trips_a_record_and_clears(tmp_path: Path, make_step) -> None:
    marker = InflightMarker(tmp_path / "h.duckdb")
    assert marker.read() is None
    rec = make_step(4, "import time; time.sleep(100)", "running")
    marker.write(rec)
    marker.write(rec)  # rewritten in place, not appended
    assert marker.read() == rec
    marker.clear()
    assert marker.read() is None and not marker.path.exists()


def test_a_shorter_record_over_a_longer_one_reads_back_as_itself(tmp_path: Path, make_step) -> None:
    """The marker is overwritten in place without a truncate: what is left
    of a longer record must never be read as part of the next."""
    marker = InflightMarker(tmp_path / "h.duckdb")
    long = make_step(4, "x = 1\n" * 2000, "running")
    short = make_step(5, "y = 2", "running")
    marker.write(long)
    marker.write(short, committed=True)
    assert marker.read_with_commit() == (short, True)
    assert marker.path.stat().st_size > len(json.dumps({**long.to_json(), "fm_committed": False}))
    huge = make_step(6, "z = 3\n" * 40_000, "running")
    marker.write(huge)
    marker.write(short)  # a file far longer than the record is cut back, not padded forever
    assert marker.read() == short and marker.path.stat().st_size < 4096


def test_a_torn_marker_reads_as_none(tmp_path: Path) -> None:
    marker = InflightMarker(tmp_path / "h.duckdb")
    marker.path.write_text('{"step": 3, "bra')
    assert marker.read() is None


def test_recover_interrupted_closes_running_steps_and_the_marked_one(store: Store,
                                                                    make_step) -> None:
    store.append_step(make_step(1, "x = 1"))
    store.append_step(make_step(2, "slow()", "running"))   # the watchdog's row of a long cell
    marker = InflightMarker(store.path)
    marker.write(make_step(3, "killed_at_once()", "running"))  # died before any row
    assert recover_interrupted(store, marker) == [2, 3]
    for n, code in ((2, "slow()"), (3, "killed_at_once()")):
        rec = store.step(n)
        assert rec is not None
        assert (rec.status, rec.error_name, rec.code, rec.finished_at) == \
            ("interrupted", "KernelDied", code, None)
    assert store.step(1).status == "ok"
    assert not marker.path.exists()
    assert recover_interrupted(store, InflightMarker(store.path)) == []  # once only
