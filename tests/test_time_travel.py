"""Time travel through a real kernel: declare, mutate, rewind, and compare
with a deep copy taken before the mutation (the correctness matrix)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kernel_driver import Kernel, query

SETUP = {
    "list": "xs = [1, 2]\nys = xs",
    "dict": "d = {'k': [1], 'n': 0}",
    "set": "s = {1, 2}",
    "ndarray": "import numpy as np\narr = np.arange(6.0)\nview = arr",
    "frame": "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3], 'b': [4.0, 5.0, 6.0]})",
    "instance": ("class Model:\n    def __init__(self):\n        self.w = None\n"
                 "    def fit(self, X):\n        self.w = sum(X)\n        return self\nm = Model()"),
    "closure": ("def make():\n    state = {'n': 0}\n    def inc():\n        state['n'] += 1\n"
                "        return state['n']\n    return inc\ninc = make()"),
    "lambda": "f = lambda x: x + 1",
}

# (family, mutation code, names to compare after the rewind)
CASES = [
    ("list", "xs = 'rebound'", ["xs", "ys"]),
    ("list", "xs += [3]", ["xs", "ys"]),
    ("list", "ys.append(9)", ["xs", "ys"]),          # through an alias
    ("list", "del xs", ["xs", "ys"]),
    ("dict", "def poke():\n    d['k'].append(2)\n    d['n'] = 1\npoke()", ["d"]),  # via a function
    ("dict", "d.clear()", ["d"]),
    ("set", "s.add(3)", ["s"]),
    ("ndarray", "arr *= 2", ["arr", "view"]),
    ("ndarray", "view[:2] = -1", ["arr", "view"]),
    ("ndarray", "arr = arr[::-1].copy()", ["arr", "view"]),
    ("frame", "df.drop(columns=['b'], inplace=True)", ["df"]),
    ("frame", "df.loc[df.a == 2, 'b'] = 0.0", ["df"]),
    ("frame", "df['c'] = df.a * 2", ["df"]),
    ("instance", "m.fit([1, 2, 3])", ["m"]),
    ("instance", "m.extra = 'new attribute'", ["m"]),
    ("closure", "inc(); inc()", ["inc"]),
    ("lambda", "f = lambda x: x * 10", ["f"]),
]

SAME = """
def _same(a, b):
    import numpy as np, pandas as pd
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and a.equals(b) and list(a.columns) == list(b.columns)
    if callable(a) and getattr(a, '__name__', '') in ('inc', '<lambda>'):
        return a(3) == b(3) if a.__name__ == '<lambda>' else True
    if hasattr(a, '__dict__') and type(a).__name__ == 'Model':
        return type(b).__name__ == 'Model' and vars(a) == vars(b)
    return a == b
"""


def head(k: Kernel) -> int:
    r = k.execute("", silent=True, user_expressions={
        "h": "__import__('fm_kernel').runtime.current().head"})
    return int(r.content["user_expressions"]["h"]["data"]["text/plain"])


def check(k: Kernel, code: str) -> None:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("evalue"), r.text())


@pytest.fixture(scope="module")
def tk(tmp_path_factory):
    path = tmp_path_factory.mktemp("tt") / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        k.execute(SAME)
        for code in SETUP.values():
            check(k, code)
        k.path = path  # type: ignore[attr-defined]
        yield k


@pytest.mark.parametrize("family,mutation,names", CASES,
                         ids=[f"{c[0]}:{c[1].splitlines()[0][:24]}" for c in CASES])
def test_rewind_restores_the_value_before_the_mutation(tk: Kernel, family: str, mutation: str,
                                                       names: list[str]) -> None:
    check(tk, "pass")  # a fresh step to come back to (after the previous case's rewind)
    target = head(tk)
    keep = ", ".join(f"'{n}': __import__('copy').deepcopy({n})" for n in names if n != "inc")
    # a dunder name: outside every state, so it survives the rewind it checks
    tk.execute(f"__before__ = {{{keep}}}", store_history=False)
    check(tk, mutation + "\nnew_name_after = 1")
    r = tk.execute(f"%fm rewind {target}")
    assert r.status == "ok" and f"rewound to step {target}" in r.text(), r.text()
    for n in names:
        if n == "inc":
            check(tk, "assert inc() == 1, 'closure state was not rewound'")
            continue
        check(tk, f"assert _same(__before__['{n}'], {n}), ('{n}', {n})")
    check(tk, "assert 'new_name_after' not in dir()")
    if family == "list":
        check(tk, "assert ys is xs")
    if family == "ndarray":
        check(tk, "assert view is arr")


def test_unpicklable_objects_never_fail_a_cell_and_are_rebuilt(tk: Kernel, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("line one\nline two\n")
    check(tk, f"fh = open({str(data)!r})\nimport threading\nlock = threading.Lock()")
    check(tk, "gen = (i * i for i in range(5))\nnext(gen)")
    check(tk, "import socket\nsock = socket.socket()")
    target = head(tk)
    r = tk.execute("%sql SELECT name, restorable, reason FROM variables WHERE step = "
                   f"{target} AND NOT restorable ORDER BY name")
    table = r.outputs()[0]["content"]["data"]["text/plain"]
    for name in ("fh", "gen", "lock", "sock"):
        assert name in table
    check(tk, "del fh, lock, gen\nx_after = 1")
    r = tk.execute(f"%fm rewind {target}")
    assert r.status == "ok", r.text()
    # re-running the statements that bound them, in a scratch namespace, rebuilt them
    check(tk, "assert fh.readline() == 'line one\\n'")
    check(tk, "assert lock.acquire(blocking=False)")
    # only the statement that made it re-ran (not the cell's `next(gen)`)
    check(tk, "assert next(gen) == 0 and 'x_after' not in dir()")


def test_fork_checkout_and_diff_across_branches(tk: Kernel) -> None:
    check(tk, "branch_value = 'main'")
    base = head(tk)
    r = tk.execute(f"%fm fork experiment --from {base}")
    assert "new cells go on experiment" in r.text()
    check(tk, "branch_value = 'experiment'\nonly_here = [1, 2, 3]")
    exp_head = head(tk)
    r = tk.execute("%fm checkout main")
    assert r.status == "ok" and "checked out" in r.text()
    check(tk, "assert branch_value == 'main' and 'only_here' not in dir()")
    r = tk.execute(f"%fm diff {base} {exp_head}")
    assert "only_here" in r.text() and "branch_value" in r.text()
    r = tk.execute("%fm branches")
    assert "experiment" in r.text() and str(exp_head) in r.text()
    r = tk.execute("%fm checkout experiment")
    check(tk, "assert branch_value == 'experiment' and only_here == [1, 2, 3]")
    r = tk.execute("%fm fork experiment")
    assert r.status == "error" and "exists already" in r.text()


def test_undo_and_the_abandoned_tip_stays_reachable(tk: Kernel) -> None:
    r = tk.execute("%fm checkout main")
    check(tk, "counter = 1")
    check(tk, "counter += 1")
    tip = head(tk)
    r = tk.execute("%fm undo")
    assert r.status == "ok", r.text()
    check(tk, "assert counter == 1")
    branches = tk.execute("%fm branches").text()
    assert f"main@{tip}" in branches
    r = tk.execute("%fm undo 100000")
    assert r.status == "error" and "cannot undo" in r.text()


def test_python_api_state_and_value_leave_the_namespace_alone(tk: Kernel) -> None:
    check(tk, "api_v = {'x': 1}")
    step = head(tk)
    check(tk, "api_v['x'] = 2")
    check(tk, "import fm_kernel as fm\n"
              f"past = fm.history().state({step})\n"
              "assert past['api_v'] == {'x': 1} and api_v == {'x': 2}\n"
              f"assert fm.history().value('api_v', {step}) == {{'x': 1}}\n"
              "assert 'api_v' in past.summary().name.tolist()")


def test_bad_time_travel_arguments_are_one_line(tk: Kernel) -> None:
    for bad, words in (("%fm rewind 999999", "no step 999999"), ("%fm rewind x", "invalid int"),
                       ("%fm checkout nowhere", "no branch 'nowhere'"),
                       ("%fm fork 'bad name!'", "not a usable branch name"),
                       ("%fm diff 1", "the following arguments are required")):
        r = tk.execute(bad)
        assert r.status == "error" and words in r.text(), (bad, r.text())
        assert "Traceback" not in r.text()


def test_resume_after_kill_restores_the_last_completed_step(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, "import numpy as np\nbig = np.arange(1_000_000)\nnames = ['a', 'b']\nalias = names")
        check(k, "names.append('c')\ntotal = int(big.sum())")
        k.kc.execute("import time\nnames.append('never')\ntime.sleep(60)")
        time.sleep(0.5)
        k.kill9()
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        r = k.execute("print(names, alias is names, total)")
        assert "resumed step 2" in r.text() and "ended uncleanly" in r.text(), r.text()
        assert "['a', 'b', 'c'] True 499999500000" in r.text()
        check(k, "assert big.shape == (1_000_000,)")
    steps = query(path, "SELECT step, status, parent FROM steps ORDER BY step")
    assert steps[2][1] == "interrupted" and steps[3][2] == 2  # continued from step 2


def test_clean_restart_starts_empty_and_fm_resume_restores(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, "kept = {'answer': 42}")
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, "assert 'kept' not in dir()")
        r = k.execute("%fm resume")
        assert "resumed" in r.text()
        check(k, "assert kept == {'answer': 42}")
    with Kernel(env={"FM_HISTORY": str(path), "FM_RESUME": "always"}) as k:
        check(k, "assert kept == {'answer': 42}")
    events = [r[0] for r in query(path, "SELECT kind FROM events WHERE kind = 'resume'")]
    assert len(events) == 2


def fm_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    fm = str(Path(sys.executable).parent / "fm")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    full.update(env or {})
    return subprocess.run([fm, *args], capture_output=True, text=True, env=full, timeout=120)


def test_move_to_another_machine_needs_trust_then_resumes_the_same_values(tmp_path: Path) -> None:
    src = tmp_path / "a" / "h.duckdb"
    bundle = tmp_path / "moved.fmb"
    with Kernel(env={"FM_HISTORY": str(src), "FM_MACHINE_ID": "machine-a"}) as k:
        check(k, "import numpy as np, pandas as pd\n"
                 "arr = np.linspace(0, 1, 50_000)\nframe = pd.DataFrame({'v': arr[:100]})\nsame = frame")
        r = k.execute(f"%fm export {bundle}")
        assert r.status == "ok" and "exported" in r.text(), r.text()
    dst = tmp_path / "b" / "moved.duckdb"
    b_env = {"FM_MACHINE_ID": "machine-b"}
    r = fm_cli("import", str(bundle), "--history", str(dst), env=b_env)
    assert r.returncode == 0 and "not trusted" in r.stdout, r.stderr
    with Kernel(env={"FM_HISTORY": str(dst), **b_env}) as k:
        r = k.execute("%fm resume")
        assert r.status == "error" and "unpickling, which runs code" in r.text()
        probe = k.execute("", silent=True, user_expressions={"has": "'arr' in dir()"})
        assert probe.content["user_expressions"]["has"]["data"]["text/plain"] == "False"
        # SQL over the moved history works without trust: nothing is unpickled
        r = k.execute("%sql SELECT count(*) AS n FROM steps")
        assert r.status == "ok"
    assert fm_cli("trust", str(dst), env=b_env).returncode == 0
    with Kernel(env={"FM_HISTORY": str(dst), **b_env}) as k:
        assert "resumed" in k.execute("%fm resume").text()
        check(k, "assert arr.shape == (50_000,) and abs(arr[-1] - 1.0) < 1e-12\n"
                 "assert same is frame and len(frame) == 100")
    again = fm_cli("import", str(bundle), "--history", str(dst), env=b_env)
    assert again.returncode == 1 and "already; move it away or pass --force" in again.stderr
    other = tmp_path / "c" / "h.duckdb"
    assert fm_cli("import", str(bundle), "--history", str(other), "--trust", env=b_env).returncode == 0
    # the objects travel beside the database, with relative paths only
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files(Path(str(other) + ".objects")) == files(Path(str(src) + ".objects"))
    assert len(files(Path(str(src) + ".objects"))) > 0
