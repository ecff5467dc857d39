"""The widgets in a real browser: JupyterLab started by the test on
127.0.0.1 with a token, headless Chromium through Playwright. Each test
writes a notebook with the flowmetal kernelspec into the server's root dir,
runs its cells in the page, clicks the widget's buttons like a user, then
runs a cell whose output proves what the click did. Each saves a screenshot
(FM_SCREENSHOTS=docs/img refreshes the docs' pictures).

Skipped only when no Chromium is installed (CI installs it: apt-get install
chromium). Playwright and JupyterLab are test dependencies: missing, the
test fails. Never run `playwright install`: the system Chromium is used.
"""

from __future__ import annotations

import pytest
from browser_harness import (  # noqa: F401  (browser: a fixture)
    HISTORY_CELLS, IMG, OVERFLOW_JS, VIEW_CELLS, Notebook, assert_graph_joins, browser,
    check_views_in_themes, jupyter_server, new_page, open_views, write_notebook,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with jupyter_server(tmp_path_factory.mktemp("lab"), "lab") as server:
        yield server


@pytest.fixture
def page(browser, lab, request):
    yield from new_page(browser, lab, request.node.name)


def _history_cells(extra: list[str]) -> list[str]:
    return ["import pandas as pd\nfrom fm_kernel.widgets import timeline_widget, inspect_widget\n"
            "x = 1\nprint('x is now', x)",
            "x = 2\nprint('x is now', x)",
            "x = 3\ndf = pd.DataFrame({'x': [x, x * 10]})\ndf",
            *extra]


def test_rewind_here_rewinds_the_namespace(lab, page):
    write_notebook(lab["root"], "rewind.ipynb", _history_cells(
        ["timeline_widget()", "print('x after the rewind:', x, '| df' if 'df' in dir() else '| no df')"]))
    nb = Notebook(page, lab, "rewind.ipynb")
    for i, text in enumerate(["x is now 1", "x is now 2", "30"]):
        nb.run(i, text)
    nb.run(3)
    timeline = nb.cell(3).locator(".fm-timeline")
    expect(timeline).to_be_visible(timeout=30_000)
    expect(timeline.locator(".fm-step-button")).to_have_count(4)

    timeline.locator(".fm-step-1").click()
    expect(timeline.locator(".fm-detail")).to_contain_text("Step 1 on main")
    expect(timeline.locator(".fm-outputs")).to_contain_text("x is now 1")  # its output, as it was
    timeline.locator(".fm-rewind").click()
    expect(timeline.locator(".fm-status")).to_contain_text("rewound to step 1 on main", timeout=20_000)

    nb.run(4, "x after the rewind: 1 | no df")
    # the timeline followed: HEAD moved to step 1, then the new cell became step 5
    expect(timeline.locator(".fm-step-5")).to_be_visible(timeout=10_000)
    nb.cell(4).scroll_into_view_if_needed()  # the widget and, below it, the proof
    nb.shot("timeline-rewind.png", page.locator(".jp-NotebookPanel"))


def test_fork_here_asks_a_name_then_switches_branch(lab, page):
    write_notebook(lab["root"], "fork.ipynb", _history_cells(
        ["timeline_widget()",
         "import fm_kernel\nprint('x =', x, '| branch:', fm_kernel.runtime.current().branch)\n"
         "x = 'on the branch'"]))
    nb = Notebook(page, lab, "fork.ipynb")
    for i, text in enumerate(["x is now 1", "x is now 2", "30"]):
        nb.run(i, text)
    nb.run(3)
    timeline = nb.cell(3).locator(".fm-timeline")
    expect(timeline).to_be_visible(timeout=30_000)

    timeline.locator(".fm-step-2").click()
    expect(timeline.locator(".fm-detail")).to_contain_text("Step 2 on main")
    timeline.locator(".fm-fork").click()
    timeline.locator(".fm-fork-name input").fill("experiment")
    timeline.locator(".fm-fork-confirm").click()
    expect(timeline.locator(".fm-status")).to_contain_text("forked from step 2 on experiment",
                                                           timeout=20_000)

    nb.run(4, "x = 2 | branch: experiment")
    # the new step appears on its own lane, labelled with the branch
    step5 = timeline.locator(".fm-step-5")
    expect(step5).to_be_visible(timeout=10_000)
    timeline.locator(".fm-step-5").click()
    expect(timeline.locator(".fm-detail")).to_contain_text("Step 5 on experiment")
    expect(timeline.locator(".fm-step-list")).to_contain_text("experiment")
    nb.cell(3).scroll_into_view_if_needed()
    nb.shot("timeline-fork.png", page.locator(".jp-NotebookPanel"))


def test_inspector_shows_a_past_dataframe_beside_the_present(lab, page):
    write_notebook(lab["root"], "inspect.ipynb", [
        "import pandas as pd\nfrom fm_kernel.widgets import inspect_widget\n"
        "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'sales': [10, 20, 30]})\n"
        "print(df.shape)",
        "df.loc[1, 'sales'] = 999\nprint('edited')",
        "inspect_widget(1, compare=2)",
        "print('live value:', df.loc[1, 'sales'])",
    ])
    nb = Notebook(page, lab, "inspect.ipynb")
    nb.run(0, "(3, 2)")
    nb.run(1, "edited")
    nb.run(2)
    inspector = nb.cell(2).locator(".fm-inspector")
    expect(inspector).to_be_visible(timeout=30_000)
    expect(inspector.locator(".fm-var-df")).to_be_visible()

    inspector.locator(".fm-var-df").click()
    left, right = inspector.locator(".fm-value-left"), inspector.locator(".fm-value-right")
    expect(left).to_contain_text("DataFrame · 3 rows × 2 columns", timeout=20_000)
    expect(left).to_contain_text("Lima")
    assert "'Lima'" not in left.inner_text()                      # a string, not its repr
    expect(left.locator("td", has_text="20")).to_have_count(1)     # the past value
    expect(right.locator("td", has_text="999")).to_have_count(1)   # beside the later one
    expect(inspector.locator(".fm-badge")).to_contain_text("differs")

    # the rows line up under the header: name buttons under "name", types under "type"
    lefts = inspector.evaluate("""(i) => {
        const x = (el) => Math.round(el.getBoundingClientRect().left);
        return {name: x(i.querySelector('.fm-sort-name')), type: x(i.querySelector('.fm-sort-type')),
                buttons: [...i.querySelectorAll('.fm-var')].map(x),
                types: [...i.querySelectorAll('.fm-row-text')].map((r) => x(r.children[0]))};
    }""")
    assert set(lefts["buttons"]) == {lefts["name"]}, lefts
    assert set(lefts["types"]) == {lefts["type"]}, lefts
    assert inspector.evaluate(OVERFLOW_JS) == []
    nb.run(3, "live value: 999")  # looking at the past changed nothing
    nb.cell(2).scroll_into_view_if_needed()
    nb.shot("inspector-dataframe.png", page.locator(".jp-NotebookPanel"))


def test_diff_and_runs_widgets_render_from_the_magics(lab, page):
    write_notebook(lab["root"], "views.ipynb", [
        "import pandas as pd\nimport fm_kernel as fm\n"
        "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'sales': [10, 20, 30]})\n"
        "print('ready')",
        "here = int(fm.history().steps().step.max())  # the step above, recorded\n"
        "df.loc[1, 'sales'] = 999\nextra = [1, 2, 3]\nprint('edited')",
        "%fm diff {here} {here + 1}",
        "@fm.step\ndef fetch(order):\n    return {'order': order, 'items': 3}\n\n"
        "@fm.flow\ndef approval(order):\n    data = fetch(order)\n"
        "    ok = fm.wait_for('approve', timeout=600)\n    return data, ok\n\n"
        "run = approval.start('A-7')\nprint('started')",
        "%fm runs",
    ])
    nb = Notebook(page, lab, "views.ipynb")
    nb.run(0, "ready")
    nb.run(1, "edited")
    nb.run(2)
    diff = nb.cell(2).locator(".fm-diff-view")
    expect(diff).to_be_visible(timeout=30_000)
    expect(diff).to_contain_text("extra")   # added
    expect(diff).to_contain_text("df")      # changed, with its row/column counts
    nb.cell(2).scroll_into_view_if_needed()
    nb.shot("diff-widget.png", nb.cell(2))
    nb.run(3, "started")
    nb.run(4)
    runs = nb.cell(4).locator(".fm-runs")
    expect(runs).to_be_visible(timeout=30_000)
    expect(runs).to_contain_text("approval", timeout=20_000)
    expect(runs).to_contain_text("waiting", timeout=20_000)
    expect(runs.locator(".fm-run-steps .fm-row-text")).to_have_count(2)
    assert runs.evaluate(OVERFLOW_JS) == []   # no column runs into the next
    nb.cell(4).scroll_into_view_if_needed()
    nb.shot("runs-widget.png", nb.cell(4))


# -- themes ---------------------------------------------------------------------------

def test_every_view_is_readable_and_holds_in_the_light_and_the_dark_theme(lab, page, tmp_path):
    """Timeline, inspector, diff and runs over a 30-step, 3-branch history."""
    write_notebook(lab["root"], "themes.ipynb", HISTORY_CELLS + VIEW_CELLS)
    nb = Notebook(page, lab, "themes.ipynb")
    check_views_in_themes(nb, open_views(nb), tmp_path, "lab")


# -- layout ---------------------------------------------------------------------------

BRANCHY_CELLS = [
    "import fm_kernel as fm\nfrom fm_kernel.widgets import timeline_widget\nx = 0",
    "x = 1; note = '" + "a first line far longer than any column could show, " * 6 + "'",
    "x = 2",
    "x = 3",
    "%fm fork experiment --from 2",
    "y = 'on experiment'",
    "y = 2",
    "%fm fork third --from 1",
    "z = 'on third'",
    "z = 2",
    "%fm checkout main",
    "x = 4",
    "timeline_widget(all_branches=True)",
]

BRANCHY_STEPS = len(BRANCHY_CELLS) - 3

@pytest.mark.parametrize("width", [1440, 900])
def test_timeline_layout_holds_with_long_lines_badges_and_branches(lab, page, width, tmp_path):
    page.set_viewport_size({"width": width, "height": 1250})
    name = f"layout{width}.ipynb"
    write_notebook(lab["root"], name, BRANCHY_CELLS)
    nb = Notebook(page, lab, name)
    for i in range(len(BRANCHY_CELLS)):
        nb.run(i)
    last = len(BRANCHY_CELLS) - 1
    timeline = nb.cell(last).locator(".fm-timeline")
    expect(timeline).to_be_visible(timeout=30_000)
    steps = timeline.locator(".fm-step-list")
    # every cell is a step but the three that move HEAD (fork, fork, checkout)
    expect(steps.locator(".fm-step-button")).to_have_count(BRANCHY_STEPS)
    timeline.locator(".fm-step-2").click()
    expect(timeline.locator(".fm-detail")).to_contain_text("Step 2 on main")

    IMG.mkdir(parents=True, exist_ok=True)
    timeline.screenshot(path=str(IMG / f"timeline-layout-{width}.png"))
    assert_graph_joins(steps, BRANCHY_STEPS)
    buttons = steps.locator(".fm-step-button").evaluate_all(
        "(bs) => bs.map((b) => [b.getBoundingClientRect().left, b.getBoundingClientRect().width])")
    assert len(set(map(tuple, buttons))) == 1, buttons

    assert timeline.evaluate(OVERFLOW_JS) == []
    long_row = steps.locator(".fm-code-line", has_text="a first line far longer")
    assert "a first line far longer" in long_row.get_attribute("title")
    assert long_row.evaluate("(c) => c.scrollWidth > c.clientWidth")  # clipped, with its title
    for cls in ("fm-rewind", "fm-fork", "fm-diff", "fm-inspect"):  # labels whole, on one line
        fits = timeline.locator(f".{cls}").evaluate(
            "(b) => [b.scrollWidth <= b.clientWidth, b.getBoundingClientRect().height]")
        assert fits[0] and fits[1] < 40, (cls, fits)
    timeline.screenshot(path=str(tmp_path / f"timeline-layout-{width}.png"))


def test_many_variables_stay_within_a_screen(lab, page):
    write_notebook(lab["root"], "tall.ipynb", [
        "from fm_kernel.widgets import timeline_widget",
        "for _i in range(1, 121):\n    globals()[f'v{_i}'] = list(range(_i))\nprint('made')",
        "timeline_widget()",
    ])
    nb = Notebook(page, lab, "tall.ipynb")
    nb.run(0)
    nb.run(1, "made")
    nb.run(2)
    timeline = nb.cell(2).locator(".fm-timeline")
    expect(timeline).to_be_visible(timeout=30_000)
    timeline.locator(".fm-step-2").click()
    table = timeline.locator(".fm-variables-table")
    expect(table).to_contain_text("v10")
    first = table.locator("tbody tr td").first
    expect(first).to_have_text("v1")                         # natural order: v1, v2, …, v10
    expect(table.locator("tbody tr").nth(1).locator("td").first).to_have_text("v2")
    box = table.evaluate("(t) => [t.clientHeight, t.scrollHeight]")
    assert box[0] <= 280 < box[1], box                       # fixed height, scrolls inside
    height = timeline.evaluate("(t) => t.getBoundingClientRect().height")
    assert height <= 900, height
    timeline.locator(".fm-variables-next").click()
    expect(table.locator("tbody tr td").first).to_have_text("v51")   # page 2: v51…v100
    timeline.locator(".fm-variables-filter input").fill("v12")
    expect(table.locator("tbody tr")).to_have_count(2)       # v12, v120
    nb.shot("timeline-variables.png", timeline)


# -- one model per notebook -------------------------------------------------------------

# How long after ``trigger`` (a JS condition) became true ``follow`` did:
# both polled on every animation frame, in the page, so the figure is what a
# person sees, not when the test process happened to look.
FOLLOW_JS = """async ([trigger, follow, limit]) => {
    const t = new Function('return (' + trigger + ')'), f = new Function('return (' + follow + ')');
    const frame = () => new Promise((r) => requestAnimationFrame(r));
    const start = performance.now();
    while (!t()) { if (performance.now() - start > 30000) return 'trigger never came'; await frame(); }
    const t0 = performance.now();
    while (!f()) { if (performance.now() - t0 > limit) return 'not within ' + limit + ' ms'; await frame(); }
    return performance.now() - t0;
}"""


def test_a_rewind_in_one_timeline_shows_in_another_within_500_ms(lab, page):
    write_notebook(lab["root"], "two.ipynb", _history_cells(["timeline_widget()", "timeline_widget()"]))
    nb = Notebook(page, lab, "two.ipynb")
    for i, text in enumerate(["x is now 1", "x is now 2", "30"]):
        nb.run(i, text)
    nb.run(3)
    nb.run(4)
    first, second = nb.cell(3).locator(".fm-timeline"), nb.cell(4).locator(".fm-timeline")
    expect(second).to_be_visible(timeout=30_000)
    expect(first).to_contain_text("HEAD: main @ step 5", timeout=10_000)  # it followed the next cell
    first.locator(".fm-step-1").click()
    expect(first.locator(".fm-detail")).to_contain_text("Step 1 on main")
    first.locator(".fm-rewind").click()
    cells = "document.querySelectorAll('.jp-Notebook .jp-Cell')"
    elapsed = page.evaluate(FOLLOW_JS, [
        f"/rewound to step 1/.test({cells}[3].querySelector('.fm-status').textContent)",
        f"[...{cells}[4].querySelectorAll('.fm-timeline span')]"
        ".some((s) => s.textContent.trim() === 'HEAD: main @ step 1')",
        500])
    assert isinstance(elapsed, (int, float)), elapsed
    print(f"the second timeline showed HEAD at step 1 {elapsed:.0f} ms after the first said so")
    nb.shot("two-timelines.png", nb.panel)


def test_an_external_fm_signal_shows_in_the_runs_view_within_1_s(lab, page):
    import subprocess
    import sys
    from pathlib import Path

    write_notebook(lab["root"], "signal.ipynb", [
        "import fm_kernel as fm\n\n"
        "@fm.flow\ndef approval(order):\n    ok = fm.wait_for('approve', timeout=600)\n"
        "    return order, ok\n\nrun = approval.start('A-7')\nprint(f'started run={run.id}.')",
        "%fm runs",
    ])
    nb = Notebook(page, lab, "signal.ipynb")
    nb.run(0, "started")
    import re
    run_id = re.search(r"run=(\w+)\.", nb.cell(0).locator(".jp-OutputArea").inner_text())[1]
    nb.run(1)
    runs = nb.cell(1).locator(".fm-runs")
    expect(runs).to_contain_text("waiting", timeout=20_000)
    fm = str(Path(sys.executable).with_name("fm"))
    sent = subprocess.run([fm, "signal", run_id[:8], "approve", "--data", "true",
                           "--history", str(lab["root"] / "signal.ipynb")],
                          capture_output=True, text=True, cwd=lab["root"], timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    # no Refresh pressed, no cell run: the kernel pushes the finished run
    started = page.evaluate("() => performance.now()")
    expect(runs.locator(".fm-run-list")).to_contain_text("succeeded", timeout=1_000)
    elapsed = page.evaluate("() => performance.now()") - started
    print(f"fm signal returned; the runs view showed 'succeeded' {elapsed:.0f} ms later")
    nb.shot("runs-after-signal.png", nb.cell(1))
