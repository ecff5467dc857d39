"""The flow runs view, driven through its Python API in a real flowmetal
kernel: a flow with a step, a ``fm.wait_for('go')`` and a step after it; the
widget lists the run, shows its steps and the pending wait; Send signal
finishes it, Fork from this step starts a forked run, Cancel cancels that one,
and a run started in a later cell shows up by itself.

A fast in-process tier checks the text the rows are made of."""

from __future__ import annotations

import json
import time

from kernel_driver import Kernel

SETUP = """
import json, time
import fm_kernel.flows as fm
from fm_kernel.widgets.runs import runs_widget
from fm_kernel.widgets.runs_data import flows_journal

@fm.step
def first(x):
    return x + 1

@fm.step
def last(v):
    return {"got": v}

@fm.flow
def gated(x):
    a = first(x)
    ok = fm.wait_for('go', timeout=60)
    return last([a, ok])

def settle(run, status, timeout=10):
    end = time.monotonic() + timeout
    while run.status != status:
        assert time.monotonic() < end, (run.id, run.status)
        time.sleep(0.02)

def shown(w):
    return [[s.position, s.name, s.status, s.attempt, s.result, s.error, s.pending]
            for s in w.steps]

run = gated.start(1)
settle(run, 'waiting')
"""


def run_cell(k: Kernel, code: str) -> str:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("ename"), r.content.get("evalue"),
                              "".join(r.content.get("traceback") or []))
    return r.text()


def probe(k: Kernel, code: str):
    """Run ``code``; its last printed line is JSON."""
    return json.loads(run_cell(k, code).strip().splitlines()[-1])


def peek(k: Kernel, expr: str):
    """Evaluate ``expr`` in a silent request (not a cell, so no refresh hook)."""
    r = k.execute("", silent=True, user_expressions={"v": expr})
    v = r.content["user_expressions"]["v"]
    assert v["status"] == "ok", v
    return eval(v["data"]["text/plain"])


def test_runs_view_signal_fork_cancel_and_refresh(history):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        run_cell(k, SETUP)

        # the run is listed, newest first; selecting it shows its steps and the wait
        res = probe(k, "w = runs_widget()\nw.select(run.id[:10])\n"
                       "print(json.dumps([[r.run_id, r.flow, r.status] for r in w.runs], default=str))\n"
                       "print(json.dumps({'sel': w.selected, 'steps': shown(w),"
                       " 'rows': [r.info.value for r in w._step_rows if r.key is not None],"
                       " 'pending': w.pending.value, 'header': w.header.value,"
                       " 'cancel': w.cancel_button.disabled, 'fork': w.fork_button.disabled,"
                       " 'sig': w.signal_name.value, 'id': run.id}))")
        rid = res["id"]
        assert res["sel"] == rid
        assert [s[:4] for s in res["steps"]] == [[1, "first", "ok", 1],
                                                [2, "fm.wait_for(go)", "waiting", 0]]
        assert res["steps"][0][4] == "2"                         # first(1)'s recorded result
        assert res["steps"][1][6].startswith("waits for signal 'go', times out at ")
        assert "waits for signal &#x27;go&#x27;" in res["rows"][1]   # ... shown in its row
        assert "waits for signal" in res["pending"] and "waiting" in res["header"]
        assert res["cancel"] is False and res["fork"] is True   # no step selected yet
        assert res["sig"] == "go"                                # prefilled from the wait

        # bad JSON: one line in the widget, nothing sent
        msg = probe(k, "w.signal_name.value = 'go'\nw.signal_data.value = '{ok: tru'\n"
                       "w.signal_button.click()\nprint(json.dumps([w.message, run.status,"
                       " flows_journal().signals(run.id, 'go')]))")
        assert msg[0].startswith("data is not valid JSON") and "\n" not in msg[0], msg
        assert msg[1] == "waiting" and msg[2] == []

        # Send signal: the run takes it and finishes; the journal holds the signal
        res = probe(k, "w.signal_data.value = '{\"ok\": true}'\nw.signal_button.click()\n"
                       "msg = w.message\nresult = run.result(timeout=10)\nw.refresh()\n"
                       "print(json.dumps({'msg': msg, 'result': result, 'status': run.status,"
                       " 'signals': [d for _, d in flows_journal().signals(run.id, 'go')],"
                       " 'steps': shown(w), 'listed': w.runs[0].status}))")
        assert res["msg"] == f"sent signal 'go' to run {rid[:8]} with {{\"ok\": true}}"
        assert res["result"] == {"got": [2, {"ok": True}]}
        assert res["status"] == "succeeded" and res["listed"] == "succeeded"
        assert res["signals"] == [{"ok": True}]
        assert [s[:3] for s in res["steps"]] == [[1, "first", "ok"], [2, "fm.wait_for(go)", "ok"],
                                                [3, "last", "ok"]]
        assert res["steps"][1][4] == '{"ok": true}' and res["steps"][1][6] == ""

        # Fork from this step: click step 2's row, then the button
        res = probe(k, "next(r for r in w._step_rows if r.key == 2).button.click()\n"
                       "label = w.fork_button.description\nw.fork_button.click()\n"
                       "new = fm.get_run(w.last_fork)\nsettle(new, 'waiting')\nw.refresh()\n"
                       "row = flows_journal().run_row(new.id)\n"
                       "print(json.dumps({'label': label, 'msg': w.message, 'new': new.id,"
                       " 'from': [row['forked_from_run'], row['forked_from_step']],"
                       " 'top': [w.runs[0].run_id, w.runs[0].forked_from_run]}))")
        new = res["new"]
        assert res["label"] == "Fork from step 2"
        assert res["msg"] == f"forked run {rid[:8]} from step 2: new run {new}"
        assert res["from"] == [rid, 2] and res["top"] == [new, rid]

        # Cancel the forked run (waiting for 'go' again: step 1 came from the journal)
        res = probe(k, "w.select(new.id)\nbefore = shown(w)\nw.cancel_button.click()\n"
                       "msg = w.message\nend = time.monotonic() + 10\n"
                       "while not new._done.is_set() and time.monotonic() < end:\n"
                       "    time.sleep(0.02)\n"
                       "try:\n    new.result(timeout=5)\n    err = None\n"
                       "except Exception as exc:\n    err = type(exc).__name__\n"
                       "w.refresh()\n"
                       "print(json.dumps({'before': before, 'msg': msg, 'err': err,"
                       " 'status': new.status, 'row': flows_journal().run_row(new.id)['status'],"
                       " 'cancel': w.cancel_button.disabled, 'header': w.header.value}))")
        assert [s[:3] for s in res["before"]] == [[1, "first", "ok"], [2, "fm.wait_for(go)", "waiting"]]
        assert res["msg"] == f"cancelled run {new[:8]}"
        assert res["err"] == "Cancelled" and res["status"] == "cancelled" == res["row"]
        assert res["cancel"] is True and "cancelled" in res["header"]
        again = probe(k, "print(json.dumps(w.cancel()))")
        assert again.startswith("error: run ") and "cancelled already" in again

        # after each cell the view reloads: a run started in a later cell appears
        run_cell(k, "third = gated.start(5)")
        deadline = time.monotonic() + 10
        while peek(k, "[w.runs[0].run_id == third.id, w.runs[0].status]") != [True, "waiting"]:
            assert time.monotonic() < deadline, peek(k, "[(r.run_id, r.status) for r in w.runs]")
            time.sleep(0.1)

        # frontends without widgets get a line of text; the timeline gets a
        # "Flow runs" section by default, built when it is first opened
        res = probe(k, "from fm_kernel import widgets as W\n"
                       "t = W.timeline_widget()\nacc = t.panels\n"
                       "titles = [acc.get_title(j) for j in range(len(acc.children))]\n"
                       "i = titles.index('Flow runs')\nbefore = len(acc.children[i].children)\n"
                       "acc.selected_index = i\n"
                       "b = w._repr_mimebundle_()\nb = b[0] if isinstance(b, tuple) else b\n"
                       "print(json.dumps([b['text/plain'], titles, before,"
                       " type(acc.children[i].children[0]).__name__]))")
        assert res[0].startswith("flowmetal runs: 3 flow runs")
        assert res[1] == ["Flow runs"] and res[2] == 0 and res[3] == "RunsWidget"
        run_cell(k, "third.cancel()")

        # a reload that fails is logged and named in the view, not swallowed
        res = probe(k, "import logging\nimport fm_kernel.widgets.runs as R\n_records = []\n"
                       "class _Keep(logging.Handler):\n    def emit(self, r):\n"
                       "        _records.append(r)\n"
                       "logging.getLogger('fm_kernel.widgets').addHandler(_Keep())\n"
                       "_read = R.read_runs\n"
                       "def _broken(limit):\n    raise OSError('the journal is unreadable')\n"
                       "R.read_runs = _broken\nw.refresh_button.click()\nR.read_runs = _read\n"
                       "print(json.dumps([w.message, [(r.name, r.levelname) for r in _records]]))")
        assert res[0] == ("reloading the flow runs failed: OSError: the journal is unreadable "
                          "(traceback in the kernel's log)")
        assert res[1] == [["fm_kernel.widgets.runs", "ERROR"]]


# -- pure parts, in process ------------------------------------------------------------


def test_row_text_for_values_errors_and_pending_operations():
    from fm_kernel.widgets.runs_data import error_text, pending_text, value_text

    assert value_text('{"a": [1, 2]}') == '{"a": [1, 2]}'
    assert value_text('{"$fm": "pickle", "key": "k", "type": "tuple", "repr": "(1, 2)"}') \
        == "tuple: (1, 2)"
    assert value_text("x" * 500).endswith("…") and len(value_text("x" * 500)) == 120
    assert error_text('{"type": "ValueError", "message": "bad\\nthing"}') == "ValueError: bad thing"
    now = time.time()
    assert pending_text("sleeping", {"wake_at": now + 90}).endswith("(in 1.5 min)")
    assert pending_text("waiting", {"signal": "approve", "deadline": None}) \
        == "waits for signal 'approve', no timeout"
    assert pending_text("waiting", {"callback": "abc", "deadline": None}) \
        .startswith("waits for a POST to ") and "/callbacks/abc" in \
        pending_text("waiting", {"callback": "abc", "deadline": None})
    assert pending_text("ok", {"wake_at": now}) == ""
