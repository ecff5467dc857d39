"""One model per notebook: every open view follows the history by itself.

A real flowmetal kernel with two timelines open: a Rewind pressed in one (a
comm message, as a browser sends it), a `%fm` magic and a new cell each make
the kernel push the new HEAD into the *other* view's widgets, with no request
from the test after the change. A runs view follows a signal that arrives
from outside, through `fm signal` and the endpoint. What the test reads is
what a browser would: the widget state messages on IOPub."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kernel_driver import Kernel, check

FM = str(Path(sys.executable).with_name("fm"))


def peek(k: Kernel, expr: str) -> Any:
    """Evaluate ``expr`` in a silent request (no cell, no refresh hook)."""
    r = k.execute("", silent=True, user_expressions={"v": expr})
    v = r.content["user_expressions"]["v"]
    assert v["status"] == "ok", v
    return eval(v["data"]["text/plain"])


def click(k: Kernel, model_id: str) -> None:
    """Press a button the way a browser does: a comm message on the shell channel."""
    k.kc.shell_channel.send(k.kc.session.msg("comm_msg", {
        "comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}}))


def pushed(k: Kernel, model_id: str, holds: Callable[[dict[str, Any]], bool],
           timeout: float = 10) -> tuple[dict[str, Any], float]:
    """Read IOPub (and nothing else: no request is sent) until the kernel
    pushes a state update of ``model_id`` that ``holds``; that state and
    the seconds it took."""
    start = time.monotonic()
    seen = updates(k, {"m": model_id}, lambda seen: bool(seen) and holds(seen[-1][1]), timeout)
    return seen[-1][1], time.monotonic() - start


def drain(k: Kernel) -> None:
    while True:
        try:
            k.kc.get_iopub_msg(timeout=0.3)
        except Exception:
            return


def shows(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: text in str(state.get("value", ""))


def test_two_timelines_follow_a_rewind_a_magic_and_a_new_cell(history):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "from fm_kernel.record import changes\n"
                 "import fm_kernel.widgets\n"
                 "listening_at_import = changes.listeners()\n"
                 "from fm_kernel.widgets import timeline_widget\nx = 1")          # step 1
        check(k, "x = 2")                                                       # step 2
        check(k, "x = 3")                                                       # step 3
        # importing the widgets registers nothing; the first view does
        assert peek(k, "listening_at_import") == []
        check(k, "a = timeline_widget()\nb = timeline_widget()\na.select(1)")   # step 4
        assert peek(k, "len(changes.listeners())") == 1
        assert peek(k, "a.panels.get_title(0)") == "Flow runs"
        b_head = peek(k, "b.head_label.model_id")
        # a rewind replaces the namespace (names a and b too); the views live
        # on, held by ipywidgets as a frontend holds them
        a, b = (f"__import__('ipywidgets').Widget.widgets[{peek(k, v + '.model_id')!r}]"
                for v in "ab")
        drain(k)

        # Rewind in view a, as a browser presses it: view b shows the new HEAD
        click(k, peek(k, f"{a}.rewind_button.model_id"))
        state, _ = pushed(k, b_head, shows("@ step 1"))
        assert "<b>main</b> @ step 1" in state["value"]
        assert peek(k, f"(x, {b}.source.head)") == (1, 1)

        # a magic in a cell: b follows after the reply, without being asked
        drain(k)
        check(k, "%fm rewind 3")
        pushed(k, b_head, shows("@ step 3"))
        drain(k)
        check(k, "%fm fork side --from 2")
        state, _ = pushed(k, b_head, shows("side"))
        assert "<b>side</b> @ step 2" in state["value"]

        # a new cell: both views list it as HEAD
        drain(k)
        check(k, "y = 'new'")
        state, _ = pushed(k, b_head, lambda s: "@ step 2" not in s.get("value", "")
                          and "side" in s.get("value", ""))
        new_step = peek(k, "__import__('fm_kernel').runtime.current().head")
        assert f"@ step {new_step}" in state["value"]
        assert peek(k, f"{b}.rows.steps[-1]") == new_step
        assert peek(k, f"{a}.rows.steps[-1]") == new_step


FLOW = """
import fm_kernel.flows as fm
from fm_kernel.widgets import runs_widget

@fm.flow
def gated():
    return fm.wait_for('go', timeout=60)

run = gated.start()
import time
while run.status != 'waiting':
    time.sleep(0.02)
w = runs_widget()
"""


def test_the_runs_view_follows_a_signal_sent_from_outside(history, tmp_path):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, FLOW)
        row = peek(k, "w._run_rows[0].info.model_id")
        run_id = peek(k, "run.id")
        assert "waiting" in peek(k, "w._run_rows[0].info.value")
        drain(k)
        env = {**os.environ, "FM_HISTORY": str(history)}
        sent = subprocess.run([FM, "signal", run_id[:8], "go", "--data", json.dumps({"ok": 1}),
                               "--history", str(history)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert "delivered" in sent.stdout
        # no Refresh, no cell: the kernel pushes the finished run into the row
        state, _ = pushed(k, row, shows("succeeded"))
        assert "waiting" not in state["value"]
        assert peek(k, "run.status") == "succeeded"


# -- the busy state: pushed at once, gone afterwards (also after a failure) ---------------

SLOW = """
import time
def _slow_make(seconds):
    time.sleep(seconds)
    return Slow(seconds)

class Slow:
    def __init__(self, seconds):
        self.seconds = seconds
    def __reduce__(self):
        return (_slow_make, (self.seconds,))
"""


def updates(k: Kernel, ids: dict[str, str], until: Callable[[list[tuple[str, dict]]], bool],
            timeout: float = 30) -> list[tuple[str, dict[str, Any]]]:
    """The state updates pushed for the models in ``ids`` (name → model id),
    in order, read until ``until`` holds for them."""
    names = {v: n for n, v in ids.items()}
    seen: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"gave up waiting; pushed so far: {seen}"
        try:
            msg = k.kc.get_iopub_msg(timeout=left)
        except Exception:
            continue
        c = msg["content"]
        if (msg["msg_type"] == "comm_msg" and c.get("comm_id") in names
                and c["data"].get("method") == "update"):
            seen.append((names[c["comm_id"]], c["data"]["state"]))
    return seen


def first(seen: list[tuple[str, dict]], name: str, holds: Callable[[dict], bool]) -> int:
    for i, (n, state) in enumerate(seen):
        if n == name and holds(state):
            return i
    raise AssertionError(f"no update of {name} that holds in {seen}")


def busy_class(on: bool) -> Callable[[dict], bool]:
    return lambda s: "_dom_classes" in s and ("fm-busy" in s["_dom_classes"]) == on


def test_a_rewind_shows_its_busy_state_at_once_with_progress_then_clears(history):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        # a slow value and 6 MB (three chunks) to restore; progress is drawn
        # from the start here (the 200 ms threshold is checked below)
        check(k, SLOW + "s1 = Slow(0.3)\nfrom fm_kernel.widgets import timeline_widget")
        check(k, "big = bytes(6 << 20)")                                        # step 2
        check(k, "del s1, big\nimport builtins\nbuiltins.w = timeline_widget()\nw.select(2)\n"
                 "import fm_kernel.widgets.busy as _busy\n_busy.PROGRESS_AFTER = 0.0")
        ids = {n: peek(k, f"w.{m}.model_id") for n, m in (
            ("root", "busy.root"), ("note", "busy.note"), ("rewind", "rewind_button"),
            ("diff", "diff_button"), ("status", "status"))}
        drain(k)
        click(k, ids["rewind"])
        seen = updates(k, ids, lambda seen: any(n == "status" for n, _ in seen)
                       and any(n == "root" and busy_class(False)(s) for n, s in seen))
        on = first(seen, "root", busy_class(True))
        said = first(seen, "note", lambda s: re.search(r"restoring \d+ names, [\d.]+ MiB \(rewinding"
                                                       r" to step 2\)", s.get("value", "")))
        held = first(seen, "rewind", lambda s: s.get("disabled") is True)
        first(seen, "diff", lambda s: s.get("disabled") is True)
        progress = first(seen, "note", lambda s: "fm-busy-progress" in s.get("value", ""))
        off = first(seen, "root", busy_class(False))
        freed = first(seen, "rewind", lambda s: s.get("disabled") is False)
        done = first(seen, "status", lambda s: "rewound to step 2" in s.get("value", ""))
        assert "fm-icon-spinner" in seen[said][1]["value"]
        # the names it said it would restore are the names the rewind restored
        n = re.search(r"restoring (\d+) names", seen[said][1]["value"]).group(1)
        assert f", {n} restored" in seen[done][1]["value"], (seen[said], seen[done])
        # busy before the work, progress during it (over 200 ms), all undone after it
        assert max(on, said, held) < progress < off and freed > held and done > off, seen
        assert peek(k, "(s1.seconds, len(big), w.busy.active, w.rewind_button.disabled)") \
            == (0.3, 6 << 20, False, False)


def test_a_failed_action_clears_the_busy_state_and_a_diff_shows_at_the_top(history):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "import pandas as pd\nfrom fm_kernel.widgets import timeline_widget\n"
                 "df = pd.DataFrame({'a': range(5)})")
        check(k, "df.loc[0, 'a'] = 9")
        check(k, "w = timeline_widget()\nw.select(1)\n"
                 "def _broken(step, progress=None):\n    raise OSError('the disk went away')\n"
                 "w.source.rewind = _broken")
        ids = {n: peek(k, f"w.{m}.model_id") for n, m in (
            ("root", "busy.root"), ("rewind", "rewind_button"), ("status", "status"),
            ("diff", "diff_button"), ("extra", "extra"))}
        drain(k)
        click(k, ids["rewind"])
        seen = updates(k, ids, lambda seen: any(n == "status" for n, _ in seen))
        assert first(seen, "root", busy_class(True)) < first(seen, "root", busy_class(False))
        assert first(seen, "rewind", lambda s: s.get("disabled") is True) \
            < first(seen, "rewind", lambda s: s.get("disabled") is False)
        assert "OSError: the disk went away" in seen[-1][1]["value"]
        assert peek(k, "(w.busy.active, w.rewind_button.disabled)") == (False, False)

        # Diff with HEAD: busy while the DataFrames are compared off the main
        # thread; the result at the top of the pane, above the code
        drain(k)
        click(k, ids["diff"])
        seen = updates(k, ids, lambda seen: any(n == "root" and busy_class(False)(s)
                                                for n, s in seen))
        assert first(seen, "root", busy_class(True)) < first(seen, "extra", lambda s: "children" in s)
        assert peek(k, "w.detail.children.index(w.extra) < w.detail.children.index(w.code)")
        assert "1 changed" in peek(k, "w.extra.children[1].html.value")
        assert peek(k, "w.extra.children[1].notes['df']").startswith("1 row")


def test_progress_is_shown_only_once_the_work_has_taken_200_ms():
    import ipywidgets as W

    from fm_kernel.widgets import busy as busy_mod

    root, button = W.Box(), W.Button()
    busy = busy_mod.Busy(root, lambda: [button])
    busy.start("restoring 1 name, 1.0 GiB")
    assert "fm-busy" in root._dom_classes and button.disabled
    busy.progress(1 << 29, 1 << 30)            # at once: no progress yet
    assert "fm-busy-progress" not in busy.note.value
    busy._since -= busy_mod.PROGRESS_AFTER     # as if 200 ms had passed
    busy.progress(1 << 29, 1 << 30)
    assert "512.0 MiB of 1.0 GiB (50%)" in busy.note.value, busy.note.value
    busy.stop()
    assert "fm-busy" not in root._dom_classes and not button.disabled and busy.note.value == ""
