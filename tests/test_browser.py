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

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Screenshots go to a folder a person can open after the run (printed at the
# end of each test); FM_SCREENSHOTS=docs/img refreshes the ones the docs show.
IMG = Path(os.environ.get("FM_SCREENSHOTS") or (Path(tempfile.gettempdir()) / "fm-screenshots"))


def _chromium() -> str | None:
    for candidate in (os.environ.get("FM_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


CHROMIUM = _chromium()
if CHROMIUM is None and os.environ.get("CI"):
    # CI installs Chromium (.ci/run): missing there is a failure, not a skip
    raise RuntimeError("Chromium is not installed; .ci/run should have installed it")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium, or set FM_CHROMIUM)",
                allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
pytestmark = pytest.mark.timeout(150)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server of its own: private config, settings, workspace and
    runtime dirs, so nothing from the user's setup (or news pop-ups) leaks in."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token = uuid.uuid4().hex
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME", "FM_RESUME")}
    env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(base / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                import urllib.request

                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("JupyterLab did not start:\n"
                                   + (base / "lab.log").read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield {"url": url, "token": token, "root": root, "log": base / "lab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def write_notebook(root: Path, name: str, cells: list[str]) -> Path:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8],
                   "metadata": {}, "outputs": [], "source": src} for src in cells],
        "metadata": {"kernelspec": {"name": "flowmetal", "display_name": "Flowmetal (Python 3)",
                                    "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path = root / name
    path.write_text(json.dumps(nb, indent=1))
    return path


class Notebook:
    """A notebook open in JupyterLab, driven through the app's own commands
    (exposed with --LabApp.expose_app_in_browser) and real clicks on widgets."""

    def __init__(self, page: Page, lab: dict, name: str):
        self.page = page
        # a workspace per notebook, reset: nothing another test opened is restored
        page.goto(f"{lab['url']}/lab/workspaces/{Path(name).stem}/tree/{name}"
                  f"?reset&token={lab['token']}")
        page.wait_for_function("(name) => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.context"
                               " && window.jupyterapp.shell.currentWidget.context.path === name"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                               arg=name, timeout=60_000)
        page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext"
                               ".session.kernel.status === 'idle'", timeout=60_000)
        # room for the widget: no file browser, no tab bar
        page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
        page.wait_for_timeout(300)

    def cell(self, index: int):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def run(self, index: int, expect_text: str | None = None, timeout: float = 30_000) -> None:
        """Run cell ``index`` and wait until it has finished (and shows ``expect_text``)."""
        self.page.evaluate(
            """async (i) => {
                const panel = window.jupyterapp.shell.currentWidget;
                panel.content.activeCellIndex = i;
                panel.content.mode = 'command';
                await window.jupyterapp.commands.execute('notebook:run-cell');
            }""", index)
        prompt = self.cell(index).locator(".jp-InputPrompt")
        self.page.wait_for_function(
            """(i) => {
                const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
                const p = cells[i] && cells[i].querySelector('.jp-InputPrompt');
                return p && /\\[\\d+\\]/.test(p.textContent);
            }""", arg=index, timeout=timeout)
        assert prompt.count() == 1
        if expect_text is not None:
            expect(self.cell(index).locator(".jp-OutputArea")).to_contain_text(
                expect_text, timeout=timeout)

    def shot(self, name: str, locator=None) -> Path:
        IMG.mkdir(parents=True, exist_ok=True)
        path = IMG / name
        (locator or self.page).screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def page(browser, lab, request):
    context = browser.new_context(viewport={"width": 1440, "height": 1250})
    pg = context.new_page()
    yield pg
    try:  # what the page looked like at the end, for a failure's post-mortem
        pg.screenshot(path=str(lab["log"].parent / f"last-{request.node.name}.png"))
    except Exception:
        pass
    context.close()


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

CONTRAST_JS = """(el) => {
    // WCAG contrast of el's text against what is painted behind it: the
    // backgrounds of el and its ancestors, composited from the page up.
    const rgba = (c) => {
        const m = c.match(/rgba?\\(([^)]+)\\)/);
        if (!m) return [0, 0, 0, 0];
        const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
        return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    };
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
        const b = rgba(getComputedStyle(n).backgroundColor);
        if (b[3] > 0) { layers.push(b); if (b[3] >= 1) break; }
    }
    let bg = [255, 255, 255];
    for (const l of layers.reverse()) bg = bg.map((v, i) => l[i] * l[3] + v * (1 - l[3]));
    const f = rgba(getComputedStyle(el).color);
    const fg = [0, 1, 2].map((i) => f[i] * f[3] + bg[i] * (1 - f[3]));
    const lum = (c) => {
        const s = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * s[0] + 0.7152 * s[1] + 0.0722 * s[2];
    };
    const [a, b] = [lum(fg), lum(bg)];
    return {ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05),
            fg: getComputedStyle(el).color, bg: 'rgb(' + bg.map(Math.round).join(',') + ')'};
}"""

THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}


def set_theme(page: Page, theme: str) -> None:
    page.evaluate("(t) => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})",
                  THEMES[theme])
    page.wait_for_function("(light) => document.body.dataset.jpThemeLight === light",
                           arg="true" if theme == "light" else "false", timeout=20_000)
    page.wait_for_timeout(500)  # the theme's stylesheet is swapped in after the flag


def test_timeline_is_readable_in_the_light_and_the_dark_theme(lab, page, tmp_path):
    write_notebook(lab["root"], "themes.ipynb", _history_cells(["timeline_widget()"]))
    nb = Notebook(page, lab, "themes.ipynb")
    for i, text in enumerate(["x is now 1", "x is now 2", "30"]):
        nb.run(i, text)
    nb.run(3)
    timeline = nb.cell(3).locator(".fm-timeline")
    expect(timeline).to_be_visible(timeout=30_000)
    timeline.locator(".fm-step-3").click()
    expect(timeline.locator(".fm-code")).to_contain_text("pd.DataFrame")
    targets = {"code": timeline.locator(".fm-code"),
               "HEAD badge": timeline.locator(".fm-step-list .fm-tag", has_text="HEAD"),
               "duration": timeline.locator(".fm-step-list .fm-duration").first}
    try:
        for theme in ("light", "dark"):
            set_theme(page, theme)
            nb.cell(3).scroll_into_view_if_needed()
            for name, path in ((f"timeline-{theme}.png", tmp_path), (f"timeline-{theme}.png", IMG)):
                path.mkdir(parents=True, exist_ok=True)
                timeline.screenshot(path=str(path / name))
            for what, loc in targets.items():
                c = loc.evaluate(CONTRAST_JS)
                assert c["ratio"] >= 4.5, f"{what} in the {theme} theme: {c}"
            if theme == "dark":  # the code block itself went dark, not just its text light
                bg = targets["code"].evaluate(CONTRAST_JS)["bg"]
                assert sum(int(v) for v in bg[4:-1].split(",")) < 3 * 96, bg
    finally:
        set_theme(page, "light")  # the lab's settings outlive this test
    print(f"screenshots: {tmp_path}")


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

GRAPH_JS = """(list) => {
    // Every line of a row's graph slice that reaches the row's bottom edge
    // must meet one that leaves the next row's top edge at the same point.
    const rows = [...list.querySelectorAll('svg.fm-graph')].filter((s) => s.getClientRects().length);
    const ends = (svg) => {
        const r = svg.getBoundingClientRect(), h = Number(svg.getAttribute('height'));
        const top = [], bottom = [];
        for (const el of svg.querySelectorAll('line, path')) {
            let pts;
            if (el.tagName === 'line') {
                pts = [[+el.getAttribute('x1'), +el.getAttribute('y1')],
                       [+el.getAttribute('x2'), +el.getAttribute('y2')]];
            } else {
                const n = el.getAttribute('d').match(/-?[\\d.]+/g).map(Number);
                pts = [[n[0], n[1]], [n[n.length - 2], n[n.length - 1]]];
            }
            for (const [x, y] of pts) {
                if (y === 0) top.push(Math.round((r.left + x) * 2) / 2);
                if (y === h) bottom.push(Math.round((r.left + x) * 2) / 2);
            }
        }
        return {top: [...new Set(top)].sort(), bottom: [...new Set(bottom)].sort(),
                left: r.left, width: r.width, y0: r.top, y1: r.bottom};
    };
    return rows.map(ends);
}"""

OVERFLOW_JS = """(root) => {
    // A column's box must stay inside its row, and before the next column.
    const bad = [];
    for (const row of root.querySelectorAll('.fm-row-text')) {
        if (!row.getClientRects().length) continue;
        const outer = row.getBoundingClientRect();
        const box = row.closest('.widget-html').getBoundingClientRect();
        if (outer.right > box.right + 0.5) bad.push(['row past its widget', row.className, row.textContent]);
        const cols = [...row.children];
        cols.forEach((c, i) => {
            const r = c.getBoundingClientRect();
            if (r.right > outer.right + 0.5) bad.push(['past the row', c.className, c.textContent]);
            const next = cols[i + 1] && cols[i + 1].getBoundingClientRect();
            if (next && r.right > next.left + 0.5) bad.push(['over the next', c.className, c.textContent]);
            if (c.scrollWidth > c.clientWidth + 1 && !c.title) bad.push(['clipped, no title', c.className, c.textContent]);
        });
    }
    return bad;
}"""


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
    rows = steps.evaluate(GRAPH_JS)
    assert len(rows) == BRANCHY_STEPS
    assert len({(r["left"], r["width"]) for r in rows}) == 1, rows   # one column, one width
    for above, below in zip(rows, rows[1:]):
        assert abs(above["y1"] - below["y0"]) <= 0.5, (above, below)  # slices abut
        assert above["bottom"] == below["top"], (above, below)        # ... and their lines meet
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
