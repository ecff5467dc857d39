"""The widgets in Notebook 7 (`jupyter notebook`), beside the JupyterLab
tests of tests/test_browser.py: the same harness (tests/browser_harness.py),
a Notebook 7 server of its own, headless Chromium. Notebook 7's page is
narrower than a Lab pane, so the timeline's details sit below its steps.

Screenshots go into each test's tmp folder and IMG (FM_SCREENSHOTS=docs/img
refreshes the docs' nb7-*.png).
"""

from __future__ import annotations

import pytest
from browser_harness import (  # noqa: F401  (browser: a fixture)
    HISTORY_CELLS, VIEW_CELLS, Notebook, browser, check_views_in_themes, jupyter_server,
    new_page, open_views, set_theme, write_notebook,
)
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def nb7(tmp_path_factory):
    with jupyter_server(tmp_path_factory.mktemp("nb7"), "notebook") as server:
        yield server


@pytest.fixture
def page(browser, nb7, request):
    yield from new_page(browser, nb7, request.node.name, width=1280)


def test_rewind_here_and_an_inspector_value_in_notebook_7(nb7, page, tmp_path):
    write_notebook(nb7["root"], "rewind7.ipynb", [
        "import pandas as pd\nfrom fm_kernel.widgets import timeline_widget\n"
        "x = 1\nprint('x is now', x)",
        "x = 2\ndf = pd.DataFrame({'city': ['Oslo', 'Lima'], 'sales': [10, 20]})\n"
        "print('x is now', x)",
        "timeline_widget()",
        "print('x after the rewind:', x, '| df' if 'df' in dir() else '| no df')",
    ])
    nb = Notebook(page, nb7, "rewind7.ipynb")
    nb.run(0, "x is now 1")
    nb.run(1, "x is now 2")
    nb.run(2)
    timeline = nb.cell(2).locator(".fm-timeline")
    expect(timeline).to_be_visible(timeout=30_000)

    # the inspector, opened from the timeline, shows a past value
    timeline.locator(".fm-step-2").click()
    expect(timeline.locator(".fm-detail")).to_contain_text("Step 2 on main")
    timeline.locator(".fm-inspect").click()
    inspector = timeline.locator(".fm-inspector")
    expect(inspector).to_be_visible(timeout=20_000)
    inspector.locator(".fm-var-df").click()
    expect(inspector.locator(".fm-value-left")).to_contain_text("DataFrame · 2 rows × 2 columns",
                                                                timeout=20_000)
    expect(inspector.locator(".fm-value-left td", has_text="Lima")).to_have_count(1)

    timeline.locator(".fm-step-1").click()
    expect(timeline.locator(".fm-outputs")).to_contain_text("x is now 1")
    timeline.locator(".fm-rewind").click()
    expect(timeline.locator(".fm-status")).to_contain_text("rewound to step 1 on main",
                                                           timeout=20_000)
    nb.run(3, "x after the rewind: 1 | no df")
    expect(timeline.locator(".fm-step-4")).to_be_visible(timeout=10_000)  # it followed
    try:
        for theme in ("light", "dark"):
            set_theme(page, theme)
            timeline.scroll_into_view_if_needed()
            nb.shot(f"nb7-rewind-{theme}.png", nb.panel, tmp_path)
    finally:
        set_theme(page, "light")


def test_every_view_is_readable_and_holds_in_notebook_7(nb7, page, tmp_path):
    """Timeline, inspector, diff and runs over a 30-step, 3-branch history,
    light and dark, on Notebook 7's narrower page."""
    write_notebook(nb7["root"], "themes7.ipynb", HISTORY_CELLS + VIEW_CELLS)
    nb = Notebook(page, nb7, "themes7.ipynb")
    check_views_in_themes(nb, open_views(nb), tmp_path, "nb7")
