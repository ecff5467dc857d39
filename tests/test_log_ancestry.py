"""`%fm log` and `fm log` follow HEAD's ancestry: the steps a rewind left
behind show under their own branch (`main@7`), kernel sessions are marked,
each row has the cell's In[N]; `%fm branches` gives the step each branch
forked from. Real kernels, real histories, the real `fm` command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jupyter_client.manager import KernelManager

from kernel_driver import KERNEL_NAME, Kernel, check, query

FM = [str(Path(sys.executable).with_name("fm"))]


def table(text: str) -> list[dict[str, str]]:
    """A printed table's rows as header -> cell, cut at the header's columns
    (cells may be empty); the kernel-session lines are left out."""
    lines = text.splitlines()
    found = list(re.finditer(r"\S+", lines[0]))
    names, starts = [m.group() for m in found], [m.start() for m in found]
    out = []
    for line in lines[2:]:
        if line.startswith("-- "):
            continue
        cuts = starts[1:] + [None]
        out.append({n: line[a:b].strip() for n, a, b in zip(names, starts, cuts)})
    return out


def rows(text: str) -> dict[int, dict[str, str]]:
    """The step log's rows by step number (HEAD's star dropped)."""
    return {int(r["step"].lstrip("*")): r for r in table(text)}


def branches(text: str) -> dict[str, tuple[str, str]]:
    """`%fm branches` as name -> (head, base)."""
    return {r["branch"].lstrip("* "): (r["head"], r["base"]) for r in table(text)}


def fm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*FM, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return tmp_path / "h.duckdb"


def seven_then_rewind(k: Kernel) -> None:
    for i in range(1, 8):
        check(k, f"x = {i}")
    check(k, "%fm rewind 3")
    check(k, "y = 8")  # step 8, parent 3: 4..7 are main@7 now


def test_log_shows_heads_ancestry_and_the_rewound_steps_on_their_own_branch(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        seven_then_rewind(k)
        log = rows(check(k, "%fm log"))
        assert sorted(log) == [1, 2, 3, 8], log
        assert {log[s]["branch"] for s in log} == {"main"} and log[8]["parent"] == "3"
        every = rows(check(k, "%fm log --all"))
        assert sorted(every) == list(range(1, 9))
        assert [every[s]["branch"] for s in range(1, 9)] == \
            ["main"] * 3 + ["main@7"] * 4 + ["main"]
        left = rows(check(k, "%fm log --branch main@7"))
        assert sorted(left) == list(range(1, 8)) and left[7]["branch"] == "main@7"
        # a fork from HEAD: HEAD's ancestry crosses the fork point, each step
        # under the branch that holds it
        check(k, "%fm fork exp")
        check(k, "z = 9")
        log = rows(check(k, "%fm log"))
        assert sorted(log) == [1, 2, 3, 8, 9]
        assert log[9]["branch"] == "exp" and log[8]["branch"] == "main"


def test_branches_base_is_the_step_each_branch_forked_from(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        seven_then_rewind(k)
        check(k, "%fm fork exp --from 5")  # a fork from a step on main@7
        check(k, "e = 1")  # step 9, parent 5
        table = branches(check(k, "%fm branches"))
    assert table["main"] == ("8", "")  # the root branch forked from nothing
    assert table["main@7"] == ("7", "3")  # rewind to 3 left 4..7: forked from 3
    assert table["exp"] == ("9", "5")
    # and the CLI, reading the file once the kernel let go of it
    out = fm("branches", "--history", str(history))
    assert out.returncode == 0, out.stderr
    assert branches(out.stdout) == table and "* exp" in out.stdout


def test_a_fork_with_no_steps_yet_has_its_fork_step_as_base(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "a = 1")
        check(k, "a = 2")
        check(k, "%fm fork idea")
        assert branches(check(k, "%fm branches"))["idea"] == ("2", "2")


def test_failed_interrupted_and_killed_cells_stay_in_the_log(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "a = 1")
        assert k.execute("1 / 0").status == "error"  # step 2: failed, HEAD moves to it
        msg_id = k.kc.execute("import time\ntime.sleep(60)")
        time.sleep(1.5)
        k.km.interrupt_kernel()
        assert k.collect(msg_id).status == "error"  # step 3: interrupted
        check(k, "b = 2")
        k.kc.execute("time.sleep(60)")  # step 5: the kernel dies in it
        time.sleep(1.5)
        k.kill9()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "c = 3")  # step 6 grows from step 4: 5 never finished
        log = rows(check(k, "%fm log"))
    assert sorted(log) == [1, 2, 3, 4, 5, 6], log
    assert [log[s]["status"] for s in range(1, 7)] == \
        ["ok", "error", "interrupted", "ok", "interrupted", "ok"]
    assert log[5]["branch"] == "main" and log[5]["parent"] == "4" and log[6]["parent"] == "4"


class ServerKernel(Kernel):
    """A kernel started the way a Jupyter server starts one: its connection
    file is named kernel-<id>.json, and a restart keeps that id."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.km = KernelManager(kernel_name=KERNEL_NAME,
                                connection_file=str(folder / f"kernel-{uuid.uuid4()}.json"))
        full_env = {k: v for k, v in os.environ.items() if k not in ("FM_HISTORY", "FM_NOTEBOOK")}
        self.km.start_kernel(env={**full_env, **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)


def test_kernel_sessions_are_marked_even_when_a_restart_keeps_the_kernel_id(history: Path) -> None:
    with ServerKernel({"FM_HISTORY": str(history)}, history.parent) as k:
        check(k, "a = 1")
        check(k, "b = 2")
        k.km.restart_kernel(now=False)  # a frontend's Restart: same kernel id
        k.kc.wait_for_ready(timeout=60)
        check(k, "c = 3")
        text = check(k, "%fm log")
    kernels = {r[0] for r in query(history, "SELECT kernel_id FROM steps")}
    assert len(kernels) == 1  # so the kernel id could not tell the sessions apart
    body = text.splitlines()[2:]
    marks = [i for i, line in enumerate(body) if line.startswith("-- kernel session 2")]
    assert len(marks) == 1, text
    assert body[marks[0] - 1].split()[0] == "2" and body[marks[0] + 1].split()[0] == "*3", text
    assert not any("session 1" in line for line in body)


def test_the_in_column_is_each_cells_execution_count(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        counts = [k.execute(code).content["execution_count"]
                  for code in ("a = 1", "%fm status", "b = 2")]
        log = rows(check(k, "%fm log"))
    assert counts == [1, 2, 3]
    assert log[1]["in"] == "[1]" and log[2]["in"] == "[3]", log  # %fm status was In[2], not a step
    assert query(history, "SELECT execution_count FROM steps ORDER BY step") == [(1,), (3,)]


def test_fm_log_follows_the_same_ancestry_from_a_file_and_from_a_live_kernel(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        seven_then_rewind(k)
        live = fm("log", "--history", str(history))  # the kernel holds the file: its endpoint
        live_all = fm("log", "--all", "--history", str(history))
    assert live.returncode == 0, live.stderr
    assert sorted(rows(live.stdout)) == [1, 2, 3, 8] and "*8" in live.stdout
    assert [r["branch"] for r in rows(live_all.stdout).values()] == \
        ["main"] * 3 + ["main@7"] * 4 + ["main"]
    closed = fm("log", "--history", str(history))
    assert closed.returncode == 0 and closed.stdout == live.stdout
    assert sorted(rows(fm("log", "-n", "2", "--history", str(history)).stdout)) == [3, 8]
    bad = fm("log", "--branch", "nope", "--history", str(history))
    assert bad.returncode != 0 and "no branch 'nope'" in bad.stderr \
        and "main@7" in bad.stderr and "Traceback" not in bad.stderr
