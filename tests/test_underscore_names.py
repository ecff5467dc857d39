"""A user's ``_name`` is part of a state (issue 15): a rewind brings it back
and a flow resumed after kill -9 still finds it; IPython's own ``_`` names
(output and input history) stay out."""
from __future__ import annotations

import json
from pathlib import Path

from kernel_driver import Kernel, check, lines, wait_until

FLOW = r'''
import os, time
import fm_kernel.flows as fm
import random as _r
D = {d!r}

def _fmt(x):
    return f"<{{x}}>"

@fm.step
def wait_go(x):
    with open(os.path.join(D, "started"), "a") as f:
        f.write("x\n")
    while not os.path.exists(os.path.join(D, "go")):
        time.sleep(0.02)
    return x

@fm.flow
def job(x):
    y = wait_go(x)
    return _fmt(y) + type(_r).__name__
'''


def test_flow_using_underscore_helper_resumes_after_kill9(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "h" / "history.duckdb")}
    d = tmp_path / "marks"
    d.mkdir()
    with Kernel(env=env) as k:
        check(k, FLOW.format(d=str(d)))
        rid = check(k, "r = job.start(7)\nprint(r.id)").strip().splitlines()[-1]
        wait_until(lambda: lines(d / "started"), what="the step to start")
        k.kill9()
    (d / "go").touch()
    with Kernel(env=env) as k2:
        out = check(k2, f"import fm_kernel as fm, json\nprint(json.dumps(fm.get_run({rid!r}).result(60)))",
                    timeout=90)
        assert json.loads(out.strip().splitlines()[-1]) == "<7>module", out


def test_rewind_restores_underscore_names_and_leaves_ipython_history_out(tmp_path: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(tmp_path / "history.duckdb")}) as k:
        check(k, "def _fmt(x):\n    return 'old ' + str(x)\nimport random as _r\n_count = [1]")
        r = k.execute("", silent=True, user_expressions={
            "h": "__import__('fm_kernel').runtime.current().head"})
        target = int(r.content["user_expressions"]["h"]["data"]["text/plain"])
        check(k, "def _fmt(x):\n    return 'new ' + str(x)\n_count.append(2)\ndel _r")
        check(k, "1 + 1")  # sets IPython's _, _2 ... which are not the user's
        r = k.execute(f"%fm rewind {target}")
        assert r.status == "ok" and f"rewound to step {target}" in r.text(), r.text()
        check(k, "assert _fmt(1) == 'old 1', _fmt(1)")
        check(k, "assert _count == [1], _count")
        check(k, "assert _r.__name__ == 'random'")
        # IPython's history names are not a state's: the rewind left them as they were
        check(k, "assert callable(get_ipython) and isinstance(Out, dict) and isinstance(In, list)")
