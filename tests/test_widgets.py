"""The time-travel widgets, driven through their Python API: a real
flowmetal kernel builds a history over several cells, a cell makes the widget,
selects steps and presses buttons (``w.rewind_button.click()``), and later
cells check what the kernel's namespace and history say.

A fast in-process tier checks the pure parts (graph layout, DataFrame change
counts, recorded outputs made fit for an Output widget)."""

from __future__ import annotations

import json
import time

import pytest

from kernel_driver import Kernel, wait_until

SETUP = [
    "import pandas as pd\nimport fm_kernel as fm\n"
    "from fm_kernel.widgets import timeline_widget, inspect_widget, diff_widget\nx = 1",  # step 1
    "x = 2\nprint('two')",                                         # step 2
    "df = pd.DataFrame({'a': [1, 2, 3], 'b': [4.0, 5.0, 6.0]})",   # step 3
    "x = 3\ndf.loc[0, 'a'] = 100",                                 # step 4
]

# cells that print one JSON line the test reads back
PROBE = "import json as _json\nprint(_json.dumps({}))"


def run(k: Kernel, code: str) -> str:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("ename"), r.content.get("evalue"),
                              "".join(r.content.get("traceback") or []))
    return r.text()


def probe(k: Kernel, expr: str):
    return json.loads(run(k, PROBE.format(expr)).strip().splitlines()[-1])


@pytest.fixture
def wk(history):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        for code in SETUP:
            run(k, code)
        yield k


def test_rewind_button_rewinds_the_namespace_and_records_the_event(wk):
    # A rewind replaces the namespace, names made in the same cell too: the
    # widget is kept in a function's local, as a displayed widget is kept by
    # the frontend.
    out = run(wk, "def _press():\n    w = timeline_widget()\n    w.select(2)\n"
                  "    w.rewind_button.click()\n    return w.message\nprint(_press())")
    assert out.startswith("rewound to step 2 on main"), out
    assert probe(wk, "x") == 2
    assert probe(wk, "'df' in dir()") is False  # df came after step 2
    events = probe(wk, "fm.history().sql(\"SELECT kind, step FROM events WHERE kind = 'rewind'\")"
                       ".values.tolist()")
    assert events == [["rewind", 2]]
    log = run(wk, "%fm log --all")
    assert "x = 2" in log and "main" in log


def test_fork_button_asks_for_a_name_then_forks_and_switches(wk):
    out = run(wk, "def _press():\n    w = timeline_widget()\n    w.select(1)\n"
                  "    w.fork_button.click()\n    print(w.fork_box.layout.display)\n"
                  "    w.fork_name.value = 'experiment'\n    w.fork_confirm.click()\n"
                  "    print(w.message)\n_press()")
    lines = out.strip().splitlines()
    assert lines[0] == "None"  # the name box became visible
    assert lines[1].startswith("forked from step 1 on experiment"), out
    assert probe(wk, "[x, fm.runtime.current().branch]") == [1, "experiment"]
    run(wk, "x = 'on the branch'")
    branches = run(wk, "%fm branches")
    assert "experiment" in branches
    steps = probe(wk, "fm.history().sql(\"SELECT step, branch, parent FROM steps "
                      "WHERE branch = 'experiment' ORDER BY step\").values.tolist()")
    # the first step on the branch grew from step 1 (here the cell that pressed
    # the button; from a real click between cells, the next cell)
    assert steps[0][1:] == ["experiment", 1]
    assert [s[2] for s in steps[1:]] == [s[0] for s in steps[:-1]]  # then a chain


def test_fork_with_a_bad_name_says_so_in_the_widget_and_changes_nothing(wk):
    out = run(wk, "w = timeline_widget()\nw.select(1)\nprint(w.fork('main'))")
    assert out.startswith("error: branch 'main' exists already"), out
    assert probe(wk, "[x, fm.runtime.current().branch]") == [3, "main"]


def test_selecting_and_inspecting_never_change_the_namespace_or_the_record(wk):
    before = probe(wk, "fm.history().sql('SELECT count(*) FROM steps').iloc[0, 0].item()")
    out = run(wk, "w = timeline_widget()\n"
                  "for s in (1, 2, 3, 4):\n    w.select(s)\n"
                  "w.select(2)\nprint(w.outputs.outputs)\n"
                  "w.diff_button.click()\nw.inspect_button.click()\nprint(x, df.loc[0, 'a'])")
    assert "'text': 'two\\n'" in out            # step 2's output, as it was
    assert out.strip().splitlines()[-1] == "3 100"
    after = probe(wk, "fm.history().sql('SELECT count(*) FROM steps').iloc[0, 0].item()")
    assert after == before + 2  # the widget cell and the count cell itself: nothing else
    outs = probe(wk, f"fm.history().sql('SELECT output_type, content FROM outputs WHERE step = {before + 2}')"
                     ".values.tolist()")
    assert all(kind == "stream" for kind, _ in outs), outs  # no widget output was recorded


def test_diff_with_head_lists_changes_and_counts_dataframe_rows(wk):
    res = probe(wk, "(lambda w: (w.select(3), w.diff_button.click(), "
                    "(w.extra.children[1].result, w.extra.children[1].frame_changes))[-1])"
                    "(timeline_widget())")
    result, frames = res
    assert [c[0] for c in result["changed"]] == ["df", "x"]
    assert frames["df"]["rows_changed"] == 1 and frames["df"]["columns_changed"] == 1
    # pressed from the frontend, the DataFrames are compared on the loader thread
    run(wk, "w = timeline_widget(select=3)")
    click(wk, peek(wk, "w.diff_button.model_id"))
    wait_until(lambda: peek(wk, "len(w.extra.children) == 2 and "
                                "bool(w.extra.children[1].frame_changes)"), what="the diff")
    frames = peek(wk, "w.extra.children[1].frame_changes")
    assert frames["df"]["rows_changed"] == 1 and frames["df"]["columns_changed"] == 1
    assert "1 row changed" in peek(wk, "w.extra.children[1].html.value")
    assert "rows matched by index label" in peek(wk, "w.extra.children[1].html.value")
    text = run(wk, "print(diff_widget(2, 4).text())")
    assert "added" in text and "df" in text and "changed" in text


def test_inspector_shows_a_past_dataframe_beside_another_step(wk):
    out = run(wk, "i = inspect_widget(3, compare=4)\ni.show('df')\n"
                  "print(i.badge.value)\nprint(i.left.value)\nprint('RIGHT', i.right.value)")
    assert "differs" in out
    left, right = out.split("RIGHT", 1)
    assert ">1<" in left and ">100<" in right       # the changed cell, before and after
    assert right.count('class="fm-changed"') == 1   # ... highlighted, alone
    names = probe(wk, "(lambda i: (i.sort_by('size', descending=True), i.names())[-1])(inspect_widget(4))")
    assert set(names) >= {"df", "x", "pd"}
    assert probe(wk, "(lambda i: (i.show('x'), i.badge.value)[-1])(inspect_widget(2, compare=2))") \
        .find("equal") > 0


def test_inspector_shows_an_array_with_stats_and_a_plot(wk):
    run(wk, "import numpy as np\narr = np.linspace(0, 1, 50)")
    out = run(wk, "i = inspect_widget()\ni.show('arr')\nprint(i.left.value[:400])")
    assert "shape (50,)" in out and "mean 0.5" in out and "data:image/png;base64" in out


def peek(k: Kernel, expr: str):
    """Evaluate ``expr`` in a silent request: not a step, so nothing moves."""
    r = k.execute("", silent=True, user_expressions={"v": expr})
    v = r.content["user_expressions"]["v"]
    assert v["status"] == "ok", v
    return eval(v["data"]["text/plain"])


SLOW_VALUE = """
def _slow_make(gate):
    import os, time
    for _ in range(200):
        if os.path.exists(gate):
            return 'released by the next cell'
        time.sleep(0.05)
    return 'not released: the next cell never ran'

class Slow:
    def __init__(self, gate):
        self.gate = gate
    def __reduce__(self):
        return (_slow_make, (self.gate,))

slow = Slow({gate!r})
"""


def click(k: Kernel, model_id: str) -> None:
    """Press a button the way a browser does: a comm message on the shell channel."""
    k.kc.shell_channel.send(k.kc.session.msg("comm_msg", {
        "comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}}))


def test_a_clicked_value_loads_without_holding_up_the_next_cell(wk, tmp_path):
    # Loading `slow` waits until a file exists, and only the cell queued
    # behind the click makes it. Loaded on the kernel's main thread, the
    # click would stand between that cell and the kernel for 10 s and the
    # value would say so; loaded off it, the cell runs and releases the load.
    gate = tmp_path / "gate"
    run(wk, SLOW_VALUE.format(gate=str(gate)))
    run(wk, "i = inspect_widget()\n"
            "ids = {b.description: b.model_id for _, b, _ in i._row_pool}")
    ids = peek(wk, "ids")
    click(wk, ids["slow"])
    run(wk, f"open({str(gate)!r}, 'w').close()")
    wait_until(lambda: "released" in peek(wk, "i.left.value"), what="the clicked value")
    assert "released by the next cell" in peek(wk, "i.left.value")

    # A second click while a load runs wins: the first result is dropped.
    gate.unlink()
    run(wk, "i = inspect_widget()  # a new view: no value cached\nids = {b.description: b.model_id for _, b, _ in i._row_pool}")
    ids = peek(wk, "ids")
    click(wk, ids["slow"])
    click(wk, ids["x"])
    run(wk, f"open({str(gate)!r}, 'w').close()")
    wait_until(lambda: not peek(wk, "__import__('fm_kernel.widgets.loader').widgets.loader.pending()"),
               what="the loader to finish")
    shown = peek(wk, "(i.selected_name, i.left.value)")
    assert shown[0] == "x" and "released" not in shown[1] and "3" in shown[1], shown


def test_timeline_follows_new_cells(wk):
    run(wk, "w = timeline_widget()")
    run(wk, "y = 'a new cell'")
    # the widget refreshes on the kernel's loop once the cell's record is in
    deadline = time.monotonic() + 10
    while peek(wk, "w._rows_data[-1].code") != "y = 'a new cell'":
        assert time.monotonic() < deadline, peek(wk, "[r.code for r in w._rows_data]")
        time.sleep(0.1)
    head = peek(wk, "fm.runtime.current().head")
    assert peek(wk, "w.rows.steps[-1]") == head
    assert "HEAD" in peek(wk, "w.rows.texts[-1]")


def test_paging_and_the_all_branches_toggle(wk):
    run(wk, "fm.rewind(2)")
    run(wk, "z = 'after the rewind'")
    res = probe(wk, "(lambda w: (w.rows.steps, w.page_label.value.count('of'),"
                    " w.prev_button.disabled))(timeline_widget(all_branches=True))")
    steps, _, prev_disabled = res
    assert steps[:4] == [1, 2, 3, 4] and prev_disabled
    paged = probe(wk, "(lambda w: (w.page_size, w.rows.steps))"
                      "(__import__('fm_kernel.widgets.timeline', fromlist=['x']).TimelineWidget(page_size=2))")
    assert paged[0] == 2 and len(paged[1]) <= 2


LOG_CAPTURE = (
    "import logging\n_records = []\n"
    "class _Keep(logging.Handler):\n    def emit(self, r):\n        _records.append(r)\n"
    "logging.getLogger('fm_kernel.widgets').addHandler(_Keep())\n")


def test_a_failed_refresh_is_logged_and_named_in_the_timeline(wk):
    run(wk, LOG_CAPTURE + "w = timeline_widget()\n"
            "def _broken(branch=None):\n    raise ZeroDivisionError('the store went away')\n"
            "w.source.steps = _broken")
    run(wk, "y = 'a cell after which the timeline refreshes'")
    wait_until(lambda: "ZeroDivisionError" in peek(wk, "w.message"), what="the failure line")
    assert peek(wk, "w.message") == ("refreshing the timeline after the cell failed: "
                                     "ZeroDivisionError: the store went away "
                                     "(traceback in the kernel's log)")
    logged = peek(wk, "[(r.name, r.levelname, r.exc_info[0].__name__) for r in _records]")
    # once per cell since the break (the breaking cell's own refresh included)
    assert logged and set(logged) == {("fm_kernel.widgets.timeline", "ERROR", "ZeroDivisionError")}


def test_panels_are_named_by_whoever_builds_the_timeline_and_built_when_opened(wk):
    out = run(wk, "import ipywidgets, json\n_made = []\n"
                  "def _mine(source):\n    _made.append(source)\n    return ipywidgets.HTML('mine')\n"
                  "t = timeline_widget(panels={'Mine': _mine})\nbefore = len(_made)\n"
                  "t.panels.selected_index = 0\n"
                  "print(json.dumps([t.panels.get_title(0), before, len(_made),"
                  " t.panels.children[0].children[0].value,"
                  " timeline_widget(panels={}).panels is None,"
                  " (lambda d: [d.get_title(i) for i in range(len(d.children))])"
                  "(timeline_widget().panels)]))")
    res = json.loads(out.strip().splitlines()[-1])
    assert res == ["Mine", 0, 1, "mine", True, ["Flow runs"]]
    # a panel that fails to build says so in its section and in the log
    run(wk, LOG_CAPTURE + "t = timeline_widget(panels={'Broken': lambda s: 1 / 0})\n"
                          "t.panels.selected_index = 0")
    assert "building the &#x27;Broken&#x27; section failed: ZeroDivisionError" in \
        peek(wk, "t.panels.children[0].children[0].value")
    assert peek(wk, "[r.levelname for r in _records]") == ["ERROR"]


def test_variables_are_paged_in_natural_order_with_a_filter(wk):
    run(wk, "for _i in range(1, 121):\n    globals()[f'v{_i}'] = _i")
    res = probe(wk, "(lambda w: (w.variables.shown()[:4], len(w.variables.shown()),"
                    " w.variables.pages(), 'v2' in w.variables.names()[:3]))(timeline_widget())")
    shown, n, pages, _ = res
    assert shown == ["v1", "v2", "v3", "v4"] and n == 50 and pages == 3   # 120 v's + _i, x, df, pd…
    res = probe(wk, "(lambda w: (setattr(w.variables.filter, 'value', 'v11'),"
                    " w.variables.names())[-1])(timeline_widget())")
    assert res == ["v11", "v110", "v111", "v112", "v113", "v114", "v115", "v116", "v117",
                   "v118", "v119"]
    names = probe(wk, "inspect_widget().names()[:12]")  # the inspector sorts the same way
    assert [n for n in names if n.startswith("v")][:4] == ["v1", "v2", "v3", "v4"]
    assert probe(wk, "(lambda i: (i.next_button.click(), i.page)[-1])(inspect_widget())") == 1


def test_diff_widget_falls_back_to_the_text_table():
    """Frontends without widgets show the same table `%fm diff` prints."""
    from fm_kernel.widgets.inspector import DiffWidget

    w = DiffWidget.__new__(DiffWidget)
    w.a, w.b = 1, 2
    w.result = {"added": [("y", "", "int 1")], "removed": [], "changed": []}
    assert w.text().splitlines()[2].split() == ["added", "y", "int", "1"]


# -- pure parts, in process -------------------------------------------------------


def test_layout_puts_forks_in_their_own_lane_and_reuses_freed_lanes():
    from fm_kernel.widgets.render import layout

    rows = layout([(1, "main", None), (2, "main", 1), (3, "main", 2), (4, "main", 1),
                   (5, "exp", 4), (6, "main", None)])
    lanes = {r.step: r.lane for r in rows}
    assert lanes[1] == lanes[2] == lanes[3] == 0
    assert lanes[4] == 1                      # forked from 1 while 2..3 continue lane 0
    assert rows[0].out == [(0, rows[0].out[0][1], False), (1, rows[0].out[1][1], False)]
    assert lanes[5] == 1 and rows[4].top is not None
    assert rows[5].top is not None and rows[5].top[1] is True  # restart: dashed link to step 4


def test_frame_change_counts():
    pd = pytest.importorskip("pandas")
    from fm_kernel.widgets.previews import (
        describe_frame_change, frame_cell_mask, frame_change_counts,
    )

    a = pd.DataFrame({"a": [1, 2, 3], "b": [1.0, None, 3.0]})
    b = a.copy()
    b.loc[2, "a"] = 30
    b["c"] = 0
    b = pd.concat([b, pd.DataFrame({"a": [4], "b": [4.0], "c": [0]}, index=[3])])
    c = frame_change_counts(a, b)
    assert c == {"columns_added": 1, "columns_removed": 0, "rows_added": 1, "rows_removed": 0,
                 "rows_changed": 1, "columns_changed": 1, "cells_changed": 1, "by_position": 0,
                 "rows_changed_by_position": 1}
    assert describe_frame_change(c) == ("1 row changed, 1 column changed, 1 row added, "
                                        "1 column added (rows matched by index label); "
                                        "matched by position instead: 1 row changed")
    # after a reset_index every label moved: the text says how rows were paired,
    # and what pairing them by position gives
    shifted = a.iloc[1:].reset_index(drop=True)
    assert describe_frame_change(frame_change_counts(a, shifted)).endswith(
        "(rows matched by index label); matched by position instead: 2 rows changed")
    # sorted: by label nothing changed but the order; by position every moved row differs
    flipped = a.iloc[::-1]
    assert describe_frame_change(frame_change_counts(a, flipped)).startswith("0 rows changed")
    dup = pd.DataFrame({"a": [1, 2]}, index=[0, 0])
    assert describe_frame_change(frame_change_counts(dup, dup)).endswith(
        "(rows matched by position (the index has repeated labels))")
    assert frame_cell_mask(a, a.copy()).values.sum() == 0  # NaN equals NaN here


def test_recorded_outputs_are_made_fit_for_an_output_widget():
    from fm_kernel.widgets.render import outputs_for_widget

    outs = [{"output_type": "stream", "name": "stdout", "text": "gone\n"},
            {"output_type": "clear_output", "wait": False},
            {"output_type": "display_data", "data": {"text/plain": "IntSlider(...)",
             "application/vnd.jupyter.widget-view+json": {"model_id": "x"}}, "metadata": {},
             "transient": {"display_id": "d"}},
            {"output_type": "execute_result", "data": {"image/png": "iVBO"}, "metadata": {},
             "execution_count": 3}]
    shown = outputs_for_widget(outs)
    assert [o["output_type"] for o in shown] == ["display_data", "execute_result"]
    assert shown[0]["data"] == {"text/plain": "IntSlider(...)"} and "transient" not in shown[0]
