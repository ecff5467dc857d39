"""Time travel never silently lies, through a real kernel: an object that
cannot be stored is either restored exactly (from the state it exposes, by
re-running the statement that made it, or by getting back the very object a
rewind set aside) or named in the one line a rewind, undo or checkout prints.

The coverage table declares a value of each class, mutates it in a later
cell, rewinds, and goes forward again, in one kernel for the whole table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel_driver import Kernel, query

BAD = ("class Bad:\n    def __setstate__(self, state):\n"
       "        raise ValueError('Bad cannot be unpickled')\n")

# name, setup, mutation, probe (an expression showing the state),
# outcome of the rewind and of going forward: "exact" or "named"
TABLE = [
    ("sem", "import threading\nsem = threading.Semaphore(1)", "sem.acquire()", "sem._value",
     "named", "named"),
    ("lock", "import threading\nlock = threading.Lock()", "lock.acquire()", "lock.locked()",
     "named", "named"),
    ("ev", "import threading\nev = threading.Event()", "ev.set()", "ev.is_set()", "named", "named"),
    ("h", "import hashlib\nh = hashlib.sha256(b'a')", "h.update(b'x')", "h.hexdigest()",
     "exact", "exact"),
    ("fh", "fh = open(DATA)", "fh.readline()", "fh.tell()", "named", "named"),
    ("gen", "gen = (i * i for i in range(5))", "next(gen)", "gen.gi_frame.f_lasti",
     "named", "named"),
    ("w", "import ipywidgets as W\nw = W.IntSlider(value=0)", "w.value = 100", "w.value",
     "exact", "exact"),
    ("b", BAD + "b = Bad()", "b.v = 2", "getattr(b, 'v', None)", "exact", "exact"),
    ("sock", "import socket\nsock = socket.socket()", "sock.settimeout(3.0)", "sock.gettimeout()",
     "named", "named"),
]


def check(k: Kernel, code: str) -> str:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("evalue"), r.text())
    return r.text().strip()


def head(k: Kernel) -> int:
    r = k.execute("", silent=True, user_expressions={
        "h": "__import__('fm_kernel').runtime.current().head"})
    return int(r.content["user_expressions"]["h"]["data"]["text/plain"])


def probe(k: Kernel, expr: str) -> str:
    r = k.execute("", silent=True, user_expressions={"v": expr})
    v = r.content["user_expressions"]["v"]
    assert v["status"] == "ok", (expr, v)
    return v["data"]["text/plain"]


def named(line: str, name: str) -> bool:
    """Whether the one line of a HEAD move names ``name`` as not exactly restored."""
    m = re.search(r"not tracked: ([^;(]*)", line)
    if m and name in m.group(1).strip().split(", "):
        return True
    at = line.find("not restored")
    return at >= 0 and re.search(rf"(: |, ){re.escape(name)} \(", line[at:]) is not None


@pytest.fixture(scope="module")
def uk(tmp_path_factory):
    root = tmp_path_factory.mktemp("untracked")
    data = root / "data.txt"
    data.write_text("line one\nline two\n")
    with Kernel(env={"FM_HISTORY": str(root / "history.duckdb")}) as k:
        check(k, f"DATA = {str(data)!r}")
        k.path = root / "history.duckdb"  # type: ignore[attr-defined]
        k.data = data  # type: ignore[attr-defined]
        yield k


def test_coverage_table_exact_or_named(uk: Kernel) -> None:
    results = []
    for name, setup, mutation, expr, on_rewind, on_forward in TABLE:
        check(uk, setup)
        declared, before = head(uk), probe(uk, expr)
        check(uk, mutation)
        mutated, after = head(uk), probe(uk, expr)
        assert before != after, (name, "the mutation must show in the probe")
        rewind = check(uk, f"%fm rewind {declared}")
        now = probe(uk, expr)
        forward = check(uk, f"%fm checkout {mutated}")
        later = probe(uk, expr)
        results.append((name, rewind, now, forward, later))
        for outcome, line, value, exact_value in (
                (on_rewind, rewind, now, before), (on_forward, forward, later, after)):
            if outcome == "exact":
                assert value == exact_value and not named(line, name), (name, line, value)
            else:
                # named, and what the line claims is true: it is kept as it is now
                assert named(line, name) and value == after, (name, line, value)
    print("\nclass table:")
    for name, rewind, now, forward, later in results:
        print(f"  {name:5} rewind -> {now:<22} forward -> {later}")


def test_semaphore_is_not_tracked_in_state_diff_and_line(uk: Kernel) -> None:
    check(uk, "import threading\nsem2 = threading.Semaphore(1)")
    a = head(uk)
    check(uk, "sem2.acquire()")
    b = head(uk)
    diff = check(uk, f"%fm diff {a} {b}")
    assert re.search(r"not tracked\s+sem2", diff), diff
    line = check(uk, f"%fm rewind {a}")
    assert "kept as they are now, not tracked: " in line and named(line, "sem2"), line
    assert probe(uk, "sem2._value") == "0"
    for move in (f"%fm checkout {b}", "%fm undo"):
        line = check(uk, move)
        assert named(line, "sem2"), (move, line)
    check(uk, "x_flush = 1")  # the history is read after the kernel ends; one more step
    uk.tracked_steps = (a, b)  # type: ignore[attr-defined]


def test_hashlib_change_is_seen_restored_and_returned(uk: Kernel) -> None:
    check(uk, "import hashlib\nm = hashlib.sha256()\nm.update(b'a')\nres = m.hexdigest()")
    check(uk, "m2 = hashlib.sha256(b'a')")
    a = head(uk)
    check(uk, "m2.update(b'x')\nres2 = m2.hexdigest()")
    b = head(uk)
    diff = check(uk, f"%fm diff {a} {b}")
    assert re.search(r"changed\s+m2", diff) and "res2" in diff, diff
    line = check(uk, "%fm undo")
    # re-running `m2 = hashlib.sha256(b'a')` gives exactly step a's state
    assert "rebuilt by re-running the statement that made them: m2" in line, line
    assert probe(uk, "m2.hexdigest() == hashlib.sha256(b'a').hexdigest()") == "True"
    line = check(uk, f"%fm checkout {b}")
    assert probe(uk, "m2.hexdigest() == res2") == "True" and not named(line, "m2"), line
    # m was made by three statements: re-running the one that binds it would
    # give another state, so after a change it is kept and named, never swapped
    check(uk, "m.update(b'b')")
    line = check(uk, f"%fm rewind {b}")
    assert named(line, "m") and "gives another state" in line, line
    assert probe(uk, "m.hexdigest() == hashlib.sha256(b'ab').hexdigest()") == "True"


def test_failed_rebuild_keeps_the_live_object_and_says_so(uk: Kernel, tmp_path: Path) -> None:
    gone = tmp_path / "gone.txt"
    gone.write_text("x")
    check(uk, f"fh2 = open({str(gone)!r})")
    a = head(uk)
    check(uk, "fh2.close()\nfh2 = 5")
    gone.unlink()
    line = check(uk, f"%fm rewind {a}")
    assert "not restored, kept as they are now: " in line and named(line, "fh2"), line
    assert "FileNotFoundError" in line, line
    assert probe(uk, "fh2") == "5"


def test_unloadable_value_keeps_its_group(uk: Kernel) -> None:
    check(uk, BAD + "bad = Bad()\nbad.v = 3")
    a = head(uk)
    check(uk, "bad = Bad()\nbad.w = 1")  # the v=3 object is dropped by the user, not by a restore
    line = check(uk, f"%fm rewind {a}")
    assert named(line, "bad") and "Bad cannot be unpickled" in line, line
    assert probe(uk, "(type(bad).__name__, bad.w, 'Bad' in dir())") == "('Bad', 1, True)"


def test_variables_view_has_tracked(uk: Kernel) -> None:
    a, b = uk.tracked_steps  # type: ignore[attr-defined]
    uk.shutdown()
    rows = query(uk.path, "SELECT step, name, changed, restorable, tracked FROM variables "  # type: ignore[attr-defined]
                 "WHERE step IN (?, ?) AND name IN ('sem2', 'threading') ORDER BY step, name", [a, b])
    assert rows == [(a, "sem2", True, False, False), (a, "threading", False, True, True),
                    (b, "sem2", False, False, False), (b, "threading", False, True, True)], rows
    hashed = query(uk.path, "SELECT DISTINCT tracked, restorable FROM variables "  # type: ignore[attr-defined]
                   "WHERE name = 'm2'")
    assert hashed == [(True, False)]


def test_rebuild_reads_the_values_before_the_statement(tmp_path: Path) -> None:
    """`x = threading.Semaphore(x)` re-run in a fresh kernel (nothing set aside):
    it must read the old x, not a namespace with x removed."""
    path = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        check(k, "import threading\nx = 2")
        check(k, "x = threading.Semaphore(x)")
    with Kernel(env={"FM_HISTORY": str(path)}) as k:
        line = check(k, "%fm resume")
        assert "rebuilt by re-running the statement that made them: x" in line, line
        assert probe(k, "(type(x).__name__, x._value)") == "('Semaphore', 2)"


def test_rebuild_on_request_remakes_an_untracked_object(tmp_path: Path) -> None:
    """A rewind keeps an untracked object as it is now and says how to get
    it made again; `--rebuild NAME` re-runs the statement that made it."""
    with Kernel(env={"FM_HISTORY": str(tmp_path / "h.duckdb")}) as k:
        check(k, "import threading\nn = 2\nsem = threading.Semaphore(n)")
        a = head(k)
        check(k, "sem.acquire()\nsem.acquire()")
        line = check(k, f"%fm rewind {a}")
        assert "not tracked: sem;" in line and "; --rebuild sem re-runs" in line, line
        assert probe(k, "sem._value") == "0"
        line = check(k, f"%fm rewind {a} --rebuild sem")
        assert "rebuilt by re-running the statement that made them: sem" in line, line
        assert probe(k, "sem._value") == "2"
        bad = k.execute(f"%fm rewind {a} --rebuild nope")
        assert bad.status == "error" and "step" in bad.text() + str(bad.content) and \
            "'nope'" in bad.text() + str(bad.content)
        assert probe(k, "sem._value") == "2"  # refused before anything moved
