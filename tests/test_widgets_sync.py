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
    while True:
        left = start + timeout - time.monotonic()
        assert left > 0, f"no update of {model_id} pushed within {timeout} s"
        try:
            msg = k.kc.get_iopub_msg(timeout=left)
        except Exception:
            continue
        c = msg["content"]
        if (msg["msg_type"] == "comm_msg" and c.get("comm_id") == model_id
                and c["data"].get("method") == "update" and holds(c["data"]["state"])):
            return c["data"]["state"], time.monotonic() - start


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
        assert peek(k, f"[r.step for r in {b}._rows if r.step][-1]") == new_step
        assert peek(k, f"[r.step for r in {a}._rows if r.step][-1]") == new_step


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
