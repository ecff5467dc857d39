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

    from fm_kernel.widgets.render import array_plot_png

    img = imread(io.BytesIO(array_plot_png(np.linspace(0, 1, 50))), format="png")
    assert img.shape[2] == 4
    assert img[0, 0, 3] == 0 and img[-1, -1, 3] == 0   # corners: nothing painted
    assert (img[..., 3] == 0).mean() > 0.5               # most of it shows the page behind


def test_row_columns_have_fixed_widths_and_the_full_text_in_their_title():
    from fm_kernel.widgets.render import row_html

    code = "x = 1  # " + "long " * 100 + "\nsecond line"
    html = row_html("ok", 12.0, code, labels=["main", "experiment"], head=True)
    assert "flex:0 0 74px;width:74px" in html and "flex:0 0 58px;width:58px" in html
    assert 'title="HEAD, main, experiment"' in html and "max-width:33%" in html
    assert f'title="{code[:40]}' in html.replace("&#x27;", "'")   # the whole code on hover
    assert "…" not in html                                          # CSS ellipsises, not Python
