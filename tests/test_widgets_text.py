"""`%fm timeline` and `%fm inspect` where no widget can be shown: a real
flowmetal kernel driven through jupyter_client (no JPY_SESSION_NAME, as in
`jupyter console` or a script's client) prints the branch graph and the
variables table as text, with no widget behind them."""

from __future__ import annotations

import re

import pytest

from kernel_driver import Kernel

# steps 1-4 on main; experiment forks from 2 (steps 5, 6), third from 1
# (step 7); back on main, step 8. Step 2 binds a generator: not tracked.
CELLS = [
    "x = 1",                                                    # step 1
    "y = 2\ngen = (i for i in range(3))\nname = 'flowmetal'",   # step 2
    "x = 3", "x = 4",                                           # steps 3, 4
    "%fm fork experiment --from 2", "e = 1", "e = 2",           # steps 5, 6
    "%fm fork third --from 1", "t = 1",                         # step 7
    "%fm checkout main", "x = 5",                               # step 8
]


@pytest.fixture(scope="module")
def three_branches(tmp_path_factory):
    history = tmp_path_factory.mktemp("text") / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        for code in CELLS:
            r = k.execute(code)
            assert r.status == "ok", (code, r.content.get("evalue"))
        yield k


def printed(k: Kernel, code: str) -> str:
    """What ``code`` printed; it must print, not display a widget."""
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("evalue"))
    shown = [m for m in r.outputs() if m["msg_type"] != "stream"]
    assert shown == [], shown                    # no widget, no mime bundle
    return r.text()


def rows_by_step(text: str) -> dict[int, str]:
    """Graph line of each step: the graph characters, then the step number."""
    out = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"^([*|:\\/ \-]*\*[*|:\\/ \-]*?) (\d+)  ", line)
        if m:
            out[int(m[2])] = line
    return out


def test_text_timeline_draws_every_branch_and_marks_head(three_branches):
    text = printed(three_branches, "%fm timeline --all")
    assert text.startswith("HEAD: main @ step 8 · 8 steps on all branches"), text
    rows = rows_by_step(text)
    assert sorted(rows) == list(range(1, 9)), text
    assert "(HEAD -> main) x = 5" in rows[8]
    assert "(experiment) e = 2" in rows[6]
    assert "(third) t = 1" in rows[7]
    assert "ok" in rows[1] and "y = 2" in rows[2]     # status and the first line of code
    # each branch on its own line of the graph: the star's column differs
    lanes = {s: rows[s].index("*") for s in rows}
    assert lanes[3] == lanes[4] == lanes[8] == lanes[1]          # main
    assert lanes[5] == lanes[6] != lanes[1]                      # experiment
    assert lanes[7] not in (lanes[1], lanes[5])                  # third
    assert text.count("\\") == 2, text    # two forks: a connector under step 1 and step 2


def test_text_timeline_of_this_branch_is_heads_line_only(three_branches):
    text = printed(three_branches, "%fm timeline")
    assert text.startswith("HEAD: main @ step 8 · 5 steps on branch main"), text
    assert sorted(rows_by_step(text)) == [1, 2, 3, 4, 8], text
    assert "\\" not in text and "experiment" not in text
    short = printed(three_branches, "%fm timeline --all -n 2")
    assert sorted(rows_by_step(short)) == [7, 8] and "-n N shows more" in short, short


def test_text_inspect_lists_the_variables_of_a_step(three_branches):
    text = printed(three_branches, "%fm inspect 2")
    lines = text.splitlines()
    assert lines[0] == "step 2 on main: 4 variables, 3 changed by it (marked *)", text
    header = lines[1].split()
    assert header[:4] == ["name", "type", "size", "summary"], text
    by_name = {ln.lstrip("* ").split()[0]: ln for ln in lines[3:]}
    assert sorted(by_name) == ["gen", "name", "x", "y"], text
    assert by_name["x"].split()[1:2] == ["int"] and by_name["x"].rstrip().endswith("1")  # x as it was
    assert "'flowmetal'" in by_name["name"] and by_name["name"].startswith("* ")  # changed by step 2
    assert not by_name["x"].startswith("*")
    assert "not tracked" in by_name["gen"]      # whether a generator changed cannot be seen
    head = printed(three_branches, "%fm inspect")   # default: HEAD, step 8
    assert head.startswith("step 8 on main: 4 variables, 1 changed by it"), head
    r = three_branches.execute("%fm inspect 99")
    assert r.status == "error" and "no step 99" in r.content["evalue"]


def test_a_widget_shown_where_it_cannot_render_carries_the_text_form(three_branches):
    # nbconvert and `fm run` keep a displayed widget's text/plain: the graph
    # and the table, not a pointer elsewhere. (Runs last: it adds steps.)
    r = three_branches.execute(
        "from fm_kernel.widgets import timeline_widget, inspect_widget\n"
        "display(timeline_widget(all_branches=True), inspect_widget(2))")
    assert r.status == "ok", r.content.get("evalue")
    texts = [m["content"]["data"]["text/plain"] for m in r.outputs()
             if m["msg_type"] == "display_data"]
    assert len(texts) == 2, texts
    assert "(experiment) e = 2" in texts[0] and "(third) t = 1" in texts[0], texts[0]
    assert "|\\" in texts[0] and "HEAD -> main" in texts[0], texts[0]
    assert texts[1].startswith("4 variables after step 2") and "not tracked" in texts[1], texts[1]
