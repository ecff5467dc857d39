"""HEAD survives the kernel: after every kind of HEAD move, a clean
shutdown, a user restart or kill -9 leaves a history from which the next
kernel derives the same HEAD; new cells record on its branch with its step
as parent, and after kill -9 the namespace comes back as it was.

One chain of kernels per way of ending: each kernel checks what the previous
one left, runs a cell, then makes the next HEAD move and ends the same way."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

from kernel_driver import Kernel

# (cells run first, the HEAD move, HEAD after it). Step numbers follow from
# the chain: the first kernel runs steps 1-3, every later kernel starts with
# one new cell (steps 4, 6, 7, 8, 9, 11, 12).
MOVES = [
    ("rewind", ["a = 1", "a = 2", "a = 3"], "%fm rewind 1", ("main", 1)),
    ("undo", ["d = 20"], "%fm undo", ("main", 4)),
    ("fork", [], "%fm fork f1 --from 2", ("f1", 2)),
    ("checkout branch", [], "%fm checkout main", ("main", 6)),
    ("checkout step", [], "%fm checkout 7", ("f1", 7)),
    # resume brings back the previous kernel's HEAD (f1 @ 7), after this
    # kernel moved to main and recorded a step there
    ("resume", ["%fm checkout main", "e = 5"], "%fm resume", ("f1", 7)),
    ("fork at HEAD", [], "%fm fork f2", ("f2", 11)),
]
FIRST_NEW_STEP = [4, 6, 7, 8, 9, 11, 12]

USER_INTS = ("sorted((k, v) for k, v in globals().items()"
             " if not k.startswith('_') and type(v) is int)")
LAST_STEP = ("__import__('fm_kernel').history().sql('SELECT step, branch, coalesce(parent, -1)"
             " FROM steps ORDER BY step DESC LIMIT 1').values.tolist()[0]")
TIMELINE_HEAD = "__import__('fm_kernel.widgets').widgets.timeline_widget().head_label.value"


def run(k: Kernel, code: str) -> str:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("evalue"), r.text())
    return r.text()


def expr(k: Kernel, code: str):
    r = k.execute("", silent=True, user_expressions={"v": code})
    out = r.content["user_expressions"]["v"]
    assert out["status"] == "ok", (code, out)
    return ast.literal_eval(out["data"]["text/plain"])


def status_head(k: Kernel) -> tuple[tuple[str, int | None], str]:
    text = run(k, "%fm status")
    m = re.search(r"^HEAD\s+(\S+) @ step (\d+)", text, re.M)
    assert m, text
    return (m.group(1), int(m.group(2))), text


def end(k: Kernel, how: str, env: dict[str, str]) -> Kernel:
    if how == "clean":
        k.shutdown()
        return Kernel(env=env)
    if how == "restart":
        k.km.restart_kernel(now=False)  # what a frontend's "Restart kernel" does
        k.kc.wait_for_ready(timeout=60)
        return k
    k.kill9()
    return Kernel(env=env)


@pytest.mark.parametrize("how", ["clean", "restart", "kill"])
def test_head_survives_every_move_and_every_way_of_ending(tmp_path: Path, how: str) -> None:
    env = {"FM_HISTORY": str(tmp_path / "h.duckdb")}
    k = Kernel(env=env)
    try:
        for i, (move, cells, command, want) in enumerate(MOVES):
            for cell in cells:
                run(k, cell)
            run(k, command)
            head, _ = status_head(k)
            assert head == want, (move, head)
            before = expr(k, USER_INTS)
            k = end(k, how, env)

            head, text = status_head(k)
            assert head == want, f"after {move} and a {how} end, HEAD is {head}: {text}"
            label = expr(k, TIMELINE_HEAD)
            assert f"<b>{want[0]}</b> @ step {want[1]}" in label, (move, how, label)
            if how == "kill":
                assert "ended uncleanly" in text, text
                assert expr(k, USER_INTS) == before, (move, how)
            else:
                assert expr(k, USER_INTS) == [], (move, how)  # the spec: starts empty
            run(k, f"w{i} = {i}")
            step, branch, parent = expr(k, LAST_STEP)
            assert (step, branch, parent) == (FIRST_NEW_STEP[i], want[0], want[1]), (move, how)
            assert status_head(k)[0] == (want[0], step)
    finally:
        if k.km.is_alive():
            k.shutdown()


def test_a_cell_killed_after_a_move_leaves_head_where_the_move_put_it(tmp_path: Path) -> None:
    """The record the next kernel writes for the killed cell must not count
    as HEAD: the cell never finished, so HEAD is the fork's step. With
    FM_RESUME=never nothing restores on start, so HEAD is what open derived."""
    env = {"FM_HISTORY": str(tmp_path / "h.duckdb")}
    k = Kernel(env=env)
    try:
        for cell in ("a = 1", "a = 2", "%fm fork side --from 1"):
            run(k, cell)
        k.kc.execute("import time\na = 99\ntime.sleep(60)")  # step 3, killed mid-run
        time.sleep(1.5)  # past the 'running' row (1 s)
        k.kill9()
        k = Kernel(env={**env, "FM_RESUME": "never"})
        head, text = status_head(k)
        assert head == ("side", 1), text
        assert expr(k, "__import__('fm_kernel').history().sql("
                       "'SELECT status FROM steps WHERE step = 3').values.tolist()") == [["interrupted"]]
        assert run(k, "%fm resume").startswith("resumed step 1")
        assert expr(k, USER_INTS) == [("a", 1)]
        run(k, "b = 1")
        assert expr(k, LAST_STEP) == [4, "side", 1]
    finally:
        if k.km.is_alive():
            k.shutdown()
