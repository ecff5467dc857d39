"""Colours, fonts and icons of the views, from JupyterLab's theme.

Every colour a view writes inline is one of the names below: a CSS custom
property of ours (``--fm-*``) with the light-theme colour as its fallback.
The stylesheet `STYLESHEET` (put into each view once, by `style_widget`)
binds the neutral ones to JupyterLab's own variables (``--jp-layout-color*``,
``--jp-content-font-color*``, ``--jp-border-color*``, ``--jp-brand-color*``,
the code font), so they follow whatever theme is active, and gives the
coloured ones (status, badges, changed cells, graph lanes) lighter values
under a dark theme (``body[data-jp-theme-light="false"]``), where the
light-theme colours would be dark on dark. Where the stylesheet is absent
(an HTML export), the fallbacks are the light theme.

Icons are inline SVG drawn in ``currentColor``: a glyph such as ⏳ needs an
emoji font, and where there is none it renders as a box.
"""

from __future__ import annotations

import ipywidgets as W

__all__ = [
    "BG", "BORDER", "BORDER_STRONG", "BRAND", "CODE_BG", "CODE_FONT", "ERR", "FG", "HEAD_BG",
    "HEAD_FG", "HOT_BG", "HOT_FG", "INFO", "LABEL_BG", "LABEL_FG", "LANES", "MUTED", "OK",
    "PURPLE", "STYLESHEET", "WARN", "dot", "icon", "style_widget",
]


def _var(name: str, fallback: str) -> str:
    return f"var(--fm-{name}, {fallback})"


FG = _var("fg", "#212121")
MUTED = _var("muted", "#616161")
BG = _var("bg", "#ffffff")
BORDER = _var("border", "#e0e0e0")
BORDER_STRONG = _var("border-strong", "#bdbdbd")
BRAND = _var("brand", "#1976d2")
CODE_BG = _var("code-bg", "#f5f5f5")
CODE_FONT = _var("code-font", "monospace")
OK = _var("ok", "#2e7d32")
ERR = _var("err", "#c62828")
WARN = _var("warn", "#bf360c")  # 5.6:1 on white (#e65100 was 3.8:1)
INFO = _var("info", "#1565c0")
PURPLE = _var("purple", "#6a1b9a")
HEAD_BG = _var("head-bg", "#212121")
HEAD_FG = _var("head-fg", "#ffffff")
LABEL_BG = _var("label-bg", "#455a64")
LABEL_FG = _var("label-fg", "#ffffff")
HOT_BG = _var("hot-bg", "#ffe082")
HOT_FG = _var("hot-fg", "#000000")

# (light, dark): lines of the branch graph, one per branch in turn
_LANES = (("#546e7a", "#b0bec5"), ("#6a1b9a", "#ce93d8"), ("#00838f", "#4dd0e1"),
          ("#ad1457", "#f48fb1"), ("#283593", "#9fa8da"), ("#558b2f", "#aed581"),
          ("#8d6e63", "#bcaaa4"), ("#f9a825", "#fff176"))
LANES = tuple(_var(f"lane-{i}", light) for i, (light, _) in enumerate(_LANES))

_DARK = {"ok": "#81c784", "err": "#ef9a9a", "warn": "#ffb74d", "info": "#90caf9",
         "purple": "#ce93d8", "head-bg": "#e0e0e0", "head-fg": "#111111",
         "label-bg": "#90a4ae", "label-fg": "#111111", "hot-bg": "#8d6e00", "hot-fg": "#ffffff",
         **{f"lane-{i}": dark for i, (_, dark) in enumerate(_LANES)}}

STYLESHEET = (
    ".fm-view{"
    "--fm-fg:var(--jp-content-font-color1,#212121);"
    "--fm-muted:var(--jp-content-font-color2,#616161);"
    "--fm-bg:var(--jp-layout-color1,#ffffff);"
    "--fm-border:var(--jp-border-color2,#e0e0e0);"
    "--fm-border-strong:var(--jp-border-color1,#bdbdbd);"
    "--fm-brand:var(--jp-brand-color1,#1976d2);"
    "--fm-code-bg:var(--jp-cell-editor-background,var(--jp-layout-color2,#f5f5f5));"
    "--fm-code-font:var(--jp-code-font-family,monospace);"
    "color:var(--fm-fg)}"
    'body[data-jp-theme-light="false"] .fm-view{'
    + "".join(f"--fm-{k}:{v};" for k, v in _DARK.items()) + "}"
    ".fm-view code,.fm-view pre{font-family:var(--fm-code-font);color:var(--fm-fg)}"
    ".fm-view .fm-ellipsis{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0}"
    # an HTML widget's content box is a flex item that would grow to its
    # text's width; held to the widget's width, a row's columns can clip
    ".fm-view .widget-html-content{min-width:0;max-width:100%}"
    # a selected row's button: ipywidgets' "info" teal under white text is
    # 3.5:1 (the brand blue 3.1:1 in the dark theme); ours is 5.8:1 and more
    ".fm-view .jupyter-button.mod-info{background-color:" + INFO + ";color:" + HEAD_FG + "}"
    # the busy state (widgets/busy.py): a turning arc, and a wait cursor over the view
    "@keyframes fm-spin{to{transform:rotate(360deg)}}"
    ".fm-view .fm-icon-spinner{animation:fm-spin .8s linear infinite;transform-origin:50% 50%}"
    ".fm-view.fm-busy{cursor:progress}"
    # a step button with no row on this page (widgets/steplist.py)
    ".fm-view .fm-step-spare{display:none !important}"
)


def style_widget() -> W.HTML:
    """The stylesheet as an invisible widget: a view puts one among its
    children (a <style> applies wherever it sits, even in a hidden box)."""
    w = W.HTML(f"<style>{STYLESHEET}</style>", layout=W.Layout(display="none"))
    w.add_class("fm-style")
    return w


_ICONS = {
    # an hourglass: two triangles meeting at the waist, with top and bottom bars
    "waiting": '<path d="M3 1h10M3 15h10M4 1c0 4 4 5 4 7s-4 3-4 7M12 1c0 4-4 5-4 7s4 3 4 7" '
               'fill="none" stroke="currentColor" stroke-width="1.5"/>',
    # a three-quarter arc, turned by the .fm-icon-spinner animation
    "spinner": '<circle cx="8" cy="8" r="6" fill="none" stroke="currentColor" stroke-opacity=".25" '
               'stroke-width="2"/><path d="M8 2a6 6 0 0 1 6 6" fill="none" stroke="currentColor" '
               'stroke-width="2" stroke-linecap="round"/>',
    # a clock face with hands at ten past
    "sleeping": '<circle cx="8" cy="8" r="6.5" fill="none" stroke="currentColor" '
                'stroke-width="1.5"/><path d="M8 4v4l3 2" fill="none" stroke="currentColor" '
                'stroke-width="1.5"/>',
}


def icon(name: str, title: str = "") -> str:
    """A 12 px inline SVG icon (``waiting``, ``sleeping``, ``spinner``) in the text colour."""
    tip = f"<title>{title}</title>" if title else ""
    return (f'<svg class="fm-icon fm-icon-{name}" width="12" height="12" viewBox="0 0 16 16" '
            f'style="vertical-align:-1px;margin-right:4px" aria-hidden="{str(not title).lower()}">'
            f'{tip}{_ICONS[name]}</svg>')


def dot(colour: str) -> str:
    """A small filled circle in ``colour`` (a status light), drawn by CSS,
    not a ● glyph whose size and baseline vary from font to font."""
    return (f'<span class="fm-dot" style="display:inline-block;width:8px;height:8px;'
            f'border-radius:50%;background:{colour};margin-right:4px;vertical-align:0"></span>')
