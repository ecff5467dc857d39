"""What the browser tests (and bench/widgets_browser.py) share: a Jupyter
server of their own (JupyterLab or Notebook 7) on 127.0.0.1 with a token,
headless Chromium through Playwright, a notebook driven through the app's
own commands (exposed with expose_app_in_browser) and real clicks, theme
switching, and the checks a script can make on what a person would see
(contrast, graph lines that join, columns that do not overflow).

Never run `playwright install`: the system Chromium is used. Importing this
module skips the importing test module when no Chromium is installed (and
fails under CI, which installs it).
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
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
# Variables a test's server must not inherit: they would bind every kernel
# it starts to one history instead of each notebook's own.
_HISTORY_ENV = ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME", "FM_RESUME")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_server(base: Path, app: str = "lab", env: dict | None = None) -> Iterator[dict]:
    """A JupyterLab (``app="lab"``) or Notebook 7 (``"notebook"``) server of
    its own: private config, settings, workspace and runtime dirs under
    ``base``, so nothing from the user's setup (or news pop-ups) leaks in.
    ``env`` adds variables the server (and so its kernels) sees."""
    root = base / "root"
    root.mkdir(parents=True, exist_ok=True)
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token = uuid.uuid4().hex
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in _HISTORY_ENV}
    full_env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
                    JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
                    JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    **(env or {}))
    module, app_class = {"lab": ("jupyterlab", "LabApp"),
                         "notebook": ("notebook", "JupyterNotebookApp")}[app]
    cmd = [sys.executable, "-m", module, "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--{app_class}.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = base / f"{app}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jupyter {app} did not start:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield {"url": url, "token": token, "root": root, "log": log_path, "app": app}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def chromium() -> Iterator:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def new_page(browser, server: dict, name: str, width: int = 1440, height: int = 1250):
    """A fresh browser context and page; yields the page, then keeps what it
    looked like at the end beside the server's log, for a failure's post-mortem."""
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    try:
        yield pg
    finally:
        try:
            pg.screenshot(path=str(server["log"].parent / f"last-{name}.png"))
        except Exception:
            pass
        context.close()


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
    """A notebook open in JupyterLab or Notebook 7 (both expose the app as
    `window.jupyterapp`, whose current widget is the notebook panel), driven
    through the app's commands and real clicks on widgets."""

    def __init__(self, page: Page, server: dict, name: str):
        self.page = page
        self.app = server["app"]
        if self.app == "lab":
            # a workspace per notebook, reset: nothing another test opened is restored
            page.goto(f"{server['url']}/lab/workspaces/{Path(name).stem}/tree/{name}"
                      f"?reset&token={server['token']}")
        else:
            page.goto(f"{server['url']}/notebooks/{name}?token={server['token']}")
        page.wait_for_function("(name) => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.context"
                               " && window.jupyterapp.shell.currentWidget.context.path === name"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                               arg=name, timeout=60_000)
        page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext"
                               ".session.kernel.status === 'idle'", timeout=60_000)
        if self.app == "lab":  # room for the widget: no file browser
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
        page.wait_for_timeout(300)

    @property
    def panel(self):
        return self.page.locator(".jp-NotebookPanel").first

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
        self.page.wait_for_function(
            """(i) => {
                const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
                const p = cells[i] && cells[i].querySelector('.jp-InputPrompt');
                return p && /\\[\\d+\\]/.test(p.textContent);
            }""", arg=index, timeout=timeout)
        if expect_text is not None:
            expect(self.cell(index).locator(".jp-OutputArea")).to_contain_text(
                expect_text, timeout=timeout)

    def run_all(self, count: int, timeout: float = 120_000) -> None:
        """Run the first ``count`` cells in one command (faster than one by
        one) and wait until each shows an execution count."""
        self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        self.page.wait_for_function(
            """(n) => {
                const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')].slice(0, n);
                return cells.length === n && cells.every((c) => {
                    const p = c.querySelector('.jp-InputPrompt');
                    return p && /\\[\\d+\\]/.test(p.textContent);
                });
            }""", arg=count, timeout=timeout)

    def shot(self, name: str, locator=None, *folders: Path) -> Path:
        """Save a screenshot as ``name`` in each of ``folders`` and in IMG."""
        for folder in (*folders, IMG):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            (locator or self.page).screenshot(path=str(path))
            print(f"screenshot: {path}")
        return path


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
            fg: getComputedStyle(el).color, bg: 'rgb(' + bg.map(Math.round).join(',') + ')',
            text: el.textContent.slice(0, 40)};
}"""

THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}


def set_theme(page: Page, theme: str) -> None:
    page.evaluate("(t) => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})",
                  THEMES[theme])
    page.wait_for_function("(light) => document.body.dataset.jpThemeLight === light",
                           arg="true" if theme == "light" else "false", timeout=20_000)
    page.wait_for_timeout(500)  # the theme's stylesheet is swapped in after the flag


def low_contrast(locator, minimum: float = 4.5) -> list[dict]:
    """Every visible element ``locator`` matches whose text has less than
    ``minimum``:1 contrast against what is behind it."""
    return [c for c in locator.evaluate_all(
        f"(els) => els.filter((e) => e.getClientRects().length && e.textContent.trim())"
        f".map({CONTRAST_JS})") if c["ratio"] < minimum]


# -- layout ---------------------------------------------------------------------------

GRAPH_JS = """(list) => {
    // Where each row's graph slice has lines reaching its top and bottom
    // edges, in page coordinates (half-pixel precision).
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


def assert_graph_joins(steps, count: int) -> list[dict]:
    """Every line of a row's graph slice that reaches the row's bottom edge
    meets one leaving the next row's top edge at the same point, the slices
    abut, and all share one column of one width."""
    rows = steps.evaluate(GRAPH_JS)
    assert len(rows) == count, (len(rows), count)
    assert len({(r["left"], r["width"]) for r in rows}) == 1, rows   # one column, one width
    for above, below in zip(rows, rows[1:]):
        assert abs(above["y1"] - below["y0"]) <= 0.5, (above, below)  # slices abut
        assert above["bottom"] == below["top"], (above, below)        # ... and their lines meet
    return rows


# -- every view, in both themes -------------------------------------------------------

def _branchy_history() -> list[str]:
    """Cells making a 30-step history on three branches (main, experiment
    from step 5, third from step 3), with a long first line, a DataFrame
    edited between two steps and a flow run waiting for a signal."""
    cells = ["import pandas as pd\nimport fm_kernel as fm\n"
             "from fm_kernel.widgets import timeline_widget, inspect_widget\nx = 0",
             "x = 1; note = '" + "a first line far longer than any column could show, " * 6 + "'"]
    cells += [f"x = {i}" for i in range(2, 11)]                         # steps 3-11
    cells += ["%fm fork experiment --from 5"] + [f"y = {i}" for i in range(9)]   # 12-20
    cells += ["%fm fork third --from 3"] + [f"z = {i}" for i in range(5)]        # 21-25
    cells += ["%fm checkout main",
              "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'sales': [10, 20, 30]})",
              "here = int(fm.history().steps().step.max())  # the step above\n"
              "df.loc[1, 'sales'] = 999\nextra = [1, 2, 3]",
              "@fm.step\ndef fetch(order):\n    return {'order': order, 'items': 3}\n\n"
              "@fm.flow\ndef approval(order):\n    data = fetch(order)\n"
              "    ok = fm.wait_for('approve', timeout=600)\n    return data, ok\n\n"
              "run = approval.start('A-7')",
              "x = 11", "x = 12"]
    return cells


HISTORY_CELLS = _branchy_history()
HISTORY_STEPS = 30
# the timeline and inspector cells are steps too (%fm diff and %fm runs are not)
SHOWN_STEPS = HISTORY_STEPS + 2
PAGE_STEPS = 20  # a timeline page (fm_kernel/widgets/timeline.py PAGE_SIZE)
VIEW_CELLS = ["timeline_widget(all_branches=True)", "inspect_widget(here, compare=here + 1)",
              "%fm diff {here} {here + 1}", "%fm runs"]
VIEWS = {"timeline": ".fm-timeline", "inspector": ".fm-inspector", "diff": ".fm-diff-view",
         "runs": ".fm-runs"}
# what a person reads: code, labels, badges, table cells, button labels
# (a disabled button is exempt, as WCAG exempts inactive controls)
TEXT = (":is(.fm-code, .fm-code-line, .fm-tag, .fm-badge, .fm-duration, .fm-row-text > *, "
        "th, td, b, button:not(:disabled), .widget-label)")


def open_views(nb: Notebook) -> dict:
    """Run the 30-step history and the four views below it; select the
    views' interesting parts. Returns view name -> its locator."""
    nb.run_all(len(HISTORY_CELLS) + len(VIEW_CELLS))
    views = {name: nb.cell(len(HISTORY_CELLS) + i).locator(sel)
             for i, (name, sel) in enumerate(VIEWS.items())}
    for v in views.values():
        expect(v).to_be_visible(timeout=30_000)
    timeline = views["timeline"]
    # it opens on the last page (steps 21-32); older turns to 1-20, with step 2
    expect(timeline.locator(".fm-step-list .fm-step-button")).to_have_count(SHOWN_STEPS - PAGE_STEPS)
    expect(timeline.locator(".fm-page-label")).to_contain_text(f"of {SHOWN_STEPS}")
    timeline.get_by_role("button", name="older").click()
    expect(timeline.locator(".fm-step-list .fm-step-button")).to_have_count(PAGE_STEPS)
    timeline.locator(".fm-step-2").click()
    expect(timeline.locator(".fm-detail")).to_contain_text("Step 2 on main")
    views["inspector"].locator(".fm-var-df").click()
    expect(views["inspector"].locator(".fm-value-left")).to_contain_text("Lima", timeout=20_000)
    expect(views["runs"]).to_contain_text("waiting", timeout=20_000)
    return views


def check_views_in_themes(nb: Notebook, views: dict, tmp_path: Path, prefix: str) -> None:
    """In the light and the dark theme: a screenshot of each view (into
    ``tmp_path`` and IMG, as PREFIX-VIEW-THEME.png); the graph's lines join,
    no column overflows, and every text a person reads has a contrast of
    at least 4.5:1 against what is behind it."""
    try:
        for theme in ("light", "dark"):
            set_theme(nb.page, theme)
            for name, view in views.items():
                view.scroll_into_view_if_needed()
                nb.shot(f"{prefix}-{name}-{theme}.png", view, tmp_path)
                overflows = view.evaluate(OVERFLOW_JS)
                assert overflows == [], f"{name} in the {theme} theme: {overflows}"
                bad = low_contrast(view.locator(TEXT))
                assert bad == [], f"{name} in the {theme} theme: {bad}"
            assert_graph_joins(views["timeline"].locator(".fm-step-list"), PAGE_STEPS)
            code = views["timeline"].locator(".fm-code")
            if theme == "dark":  # the code block itself went dark, not just its text light
                bg = code.evaluate(CONTRAST_JS)["bg"]
                assert sum(int(v) for v in bg[4:-1].split(",")) < 3 * 96, bg
    finally:
        set_theme(nb.page, "light")  # the server's settings outlive this test
    print(f"screenshots: {tmp_path}")
