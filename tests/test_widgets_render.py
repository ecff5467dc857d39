"""The widgets' HTML and pictures, in process (no kernel, no browser): colours
come from the theme, icons are SVG, previews are transparent."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fm_kernel" / "widgets"
HEX = re.compile(r"#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b")


def test_views_write_colours_only_through_the_theme_module():
    # style.py maps each name to JupyterLab's variables; the plot colours are
    # pixels in a PNG, where no CSS variable can reach.
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "style.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if HEX.search(line) and not line.startswith("PLOT_"):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


def test_theme_names_fall_back_to_the_light_theme_and_switch_under_dark():
    from fm_kernel.widgets import style

    assert style.OK == "var(--fm-ok, #2e7d32)"
    assert 'body[data-jp-theme-light="false"] .fm-view{' in style.STYLESHEET
    dark = style.STYLESHEET.split('body[data-jp-theme-light="false"] .fm-view{', 1)[1]
    assert "--fm-ok:#81c784;" in dark and "--fm-head-bg:#e0e0e0;" in dark
    for jp in ("--jp-layout-color1", "--jp-content-font-color1", "--jp-border-color1",
               "--jp-brand-color1", "--jp-code-font-family"):
        assert jp in style.STYLESHEET, jp


def test_icons_are_svg_not_emoji():
    from fm_kernel.widgets import runs, style
    from fm_kernel.widgets.runs_data import StepView

    html = runs.pending_html(StepView(2, "fm.wait_for(go)", "waiting", 0, None, None, None,
                                      "", "", pending="waits for signal 'go', no timeout"))
    assert "<svg" in html and "⏳" not in html and "waits for signal &#x27;go&#x27;" in html
    assert style.icon("sleeping").startswith("<svg") and "currentColor" in style.icon("waiting")


def test_graph_lines_take_theme_colours_through_style_not_attributes():
    from fm_kernel.widgets.render import graph_svg, layout

    rows = layout([(1, "main", None), (2, "main", 1), (3, "exp", 1)])
    svg = graph_svg(rows[0], 2, "ok", head=True)
    # SVG presentation attributes do not resolve var(); style properties do
    assert 'stroke="var(' not in svg and 'fill="var(' not in svg
    assert "style=\"stroke:var(--fm-lane-" in svg and "fill:var(--fm-ok" in svg


def test_array_preview_is_transparent():
    np = pytest.importorskip("numpy")
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from fm_kernel.widgets.previews import array_plot_png

    img = imread(io.BytesIO(array_plot_png(np.linspace(0, 1, 50))), format="png")
    assert img.shape[2] == 4
    assert img[0, 0, 3] == 0 and img[-1, -1, 3] == 0   # corners: nothing painted
    assert (img[..., 3] == 0).mean() > 0.5               # most of it shows the page behind


def test_row_columns_have_fixed_widths_and_the_full_text_in_their_title():
    from fm_kernel.widgets.render import row_html

    code = "x = 1  # " + "long " * 100 + "\nsecond line"
    html = row_html("ok", 12.0, code, labels=["main", "experiment"], head=True)
    # fixed widths, shrinking alike only when the row is narrower than its columns
    assert "flex:0 1 74px;width:74px" in html and "flex:0 1 58px;width:58px" in html
    assert 'title="HEAD, main, experiment"' in html and "max-width:33%" in html
    assert f'title="{code[:40]}' in html.replace("&#x27;", "'")   # the whole code on hover
    assert "…" not in html                                          # CSS ellipsises, not Python


def test_natural_sort_puts_v2_before_v10():
    from fm_kernel.widgets.variables import natural_key

    names = ["v10", "v2", "V1", "v100", "a", "v1", "x2y10", "x2y9"]
    assert sorted(names, key=natural_key) == ["a", "V1", "v1", "v2", "v10", "v100", "x2y9", "x2y10"]


def test_variables_list_pages_filters_and_lists_changed_names_first():
    from fm_kernel.widgets.variables import VariablesList

    class E:
        def __init__(self, n):
            self.type, self.size_bytes, self.summary = "int", 28, str(n)

    entries = {f"v{i}": E(i) for i in range(1, 121)}
    v = VariablesList(page_size=50)
    v.set_entries(entries, changed={"v77"})
    assert v.shown()[:4] == ["v77", "v1", "v2", "v3"] and len(v.shown()) == 50
    assert "1–50 of 120" in v.page_label.value and v.prev_button.disabled
    v.next_button.click()
    assert v.page == 1 and v.shown()[0] == "v50"
    v.show_page(9)                                   # past the end: the last page
    assert v.page == 2 and len(v.shown()) == 20 and v.next_button.disabled
    v.filter.value = "v1"
    assert v.page == 0 and v.names() == ["v1", *[f"v{i}" for i in range(10, 20)],
                                         *[f"v{i}" for i in range(100, 121)]]
    assert v.table.layout.max_height and v.table.layout.overflow == "auto"


def test_strings_are_shown_as_text_not_as_their_repr():
    pd = pytest.importorskip("pandas")
    from fm_kernel.widgets.previews import frame_html, value_html

    html = frame_html(pd.DataFrame({"city": ["Oslo", "Lima"], "n": [1, 2]}))
    assert ">Lima<" in html and "&#x27;Lima&#x27;" not in html
    text = value_html("two\nlines, 'quoted' inside")
    assert "str</b> · 26 characters" in text
    assert "two\nlines, &#x27;quoted&#x27; inside</pre>" in text   # the text itself, unquoted


def test_text_graph_draws_forks_both_ways_and_restarts_dashed():
    from fm_kernel.widgets.source import StepRow
    from fm_kernel.widgets.text import graph_lines

    def row(step, branch, parent):
        return StepRow(step, branch, parent, "ok", 1.0, f"s{step} = 1\nmore")

    # 1 -> 2 (main), 1 -> 3 (a) in lane 1; 4 -> 5 (b); 6 is main's first
    # cell after a clean restart (no parent), joined to 4 by a dashed line
    rows = [row(1, "main", None), row(2, "main", 1), row(3, "a", 1), row(4, "main", 2),
            row(5, "b", 4), row(6, "main", None)]
    lines = graph_lines(rows, {"main": 6, "a": 3, "b": 5}, 6, "main")
    assert lines == [
        "*   1  ok          s1 = 1",
        "|\\",
        "* | 2  ok          s2 = 1",
        "| * 3  ok          (a) s3 = 1",
        "*   4  ok          s4 = 1",
        "|\\",
        "* : 5  ok          (b) s5 = 1",       # b continues 4's lane; the restart's
        "  * 6  ok          (HEAD -> main) s6 = 1",  # dashed joint takes the next
    ], "\n".join(lines)
    # a child whose free lane is left of its parent's gets "/": main ends at
    # 3 and frees lane 0 before a's step 4 forks d
    rows = [row(1, "main", None), row(2, "a", 1), row(3, "main", 1), row(4, "a", 2),
            row(5, "a", 4), row(6, "d", 4)]
    assert [ln[:4] for ln in graph_lines(rows, {}, None, "main")] == [
        "*   ", "|\\", "| * ", "* | ", "  * ", " /|", "| * ", "*   "]
