"""Small objects are re-checked between cells, in a real kernel (recheck.py,
kernel.py): a mutation made behind every cell's back after a reply is found
while the kernel is idle and recorded by the next cell, whose capture looks
at nothing else."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from kernel_driver import Kernel, check, query


def _peek(k: Kernel, expr: str):
    r = k.execute("", silent=True, user_expressions={"v": expr})  # silent: not a step
    return ast.literal_eval(r.content["user_expressions"]["v"]["data"]["text/plain"])


def test_a_mutation_after_the_reply_is_found_while_idle(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}, cwd=tmp_path) as k:
        small = "\n".join(f"s{i} = [{i}]" for i in range(100))
        # a timer thread appends after the reply: no cell ever names xs again
        check(k, f"xs = [1]\n{small}\nimport threading\nthreading.Timer(0.1, xs.append, (2,)).start()")
        time.sleep(1.5)  # the timer fires, then idle re-checks go round every small name
        check(k, "z = 1")
        caps = "__import__('fm_kernel.runtime').runtime.current().states.last_capture"
        assert _peek(k, f"sorted({caps}.candidates)") == ["xs", "z"]
        assert _peek(k, f"sorted({caps}.changed)") == ["xs", "z"]
    rows = query(history, "SELECT CAST(value AS VARCHAR) FROM variables WHERE name = 'xs' ORDER BY step")
    assert [r[0] for r in rows][-1] == "[1, 2]"
