"""Library coverage, modelled on Kishu's coverage suite: for each class in
tests/coverage_cases.py, declare a value (step A), mutate it in a cell (B)
and inside a notebook function (C), then rewind to A, go forward to B and to
C. Each move must give the probe of the step moved to, or name the variable
in its one line and keep it as it was: never a silent difference.

One kernel runs every case, each in its own names, so the file costs one
kernel start and about eight round trips per class.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

import pytest

from coverage_cases import CASES, Case
from kernel_driver import Kernel, check
from test_untracked import named  # what a HEAD move's line counts as naming a variable


def why_named(line: str, name: str) -> str:
    m = re.search(rf"(?:: |, ){re.escape(name)} \(([^)]*(?:\([^)]*\)[^)]*)*)\)", line)
    return m.group(1)[:90] if m else "not tracked"


def ask(k: Kernel, expr: str) -> str:
    r = k.execute("", silent=True, user_expressions={"v": expr})
    v = r.content["user_expressions"]["v"]
    if v["status"] != "ok":
        return f"<{v.get('ename')}: {v.get('evalue')}>"
    return v["data"]["text/plain"]


def head(k: Kernel) -> int:
    return int(ask(k, "__import__('fm_kernel').runtime.current().head"))


def run_case(k: Kernel, c: Case) -> tuple[str, list[str]]:
    """The case's observed outcome ("exact" or "named") and its silent differences."""
    check(k, f"{c.setup}\ndef mut_{c.var}():\n    {c.fmutate}")  # fmutate's lines are indented
    steps, probes = [head(k)], [ask(k, c.probe)]
    for cell in (c.mutate, f"mut_{c.var}()"):
        check(k, cell)
        steps.append(head(k))
        probes.append(ask(k, c.probe))
    problems = []
    if len(set(probes)) != 3 or any(p.startswith("<") for p in probes):
        problems.append(f"bad case: the probes must differ and work: {probes}")
        return "bad", problems
    seen: set[str] = set()
    why: list[str] = []
    for move, i in (("rewind", 0), ("checkout", 1), ("checkout", 2)):
        before = ask(k, c.probe)
        line = check(k, f"%fm {move} {steps[i]}").strip()
        now = ask(k, c.probe)
        if named(line, c.var):
            seen.add("named")
            why.append(f"{move} {i}: {why_named(line, c.var)}")
            if now != before:
                problems.append(f"{move} {steps[i]} names it but changed it: {before} -> {now}; {line}")
        elif now == probes[i]:
            seen.add("exact")
        else:
            problems.append(f"{move} {steps[i]}: silent difference, {now} != {probes[i]}; {line}")
    if "named" in seen:
        return "named: " + "; ".join(why), problems
    return "exact", problems


def dist(module: str) -> str:
    if module == "python":
        import sys

        return "python " + ".".join(map(str, sys.version_info[:2]))
    try:
        return f"{module} {version(module)}"
    except PackageNotFoundError:
        return module


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("coverage")
    data = root / "data.txt"
    data.write_text("line one\nline two\nline three\n")
    with Kernel(env={"FM_HISTORY": str(root / "history.duckdb"), "MPLBACKEND": "agg"}) as k:
        check(k, f"DATA = {str(data)!r}")
        yield k


def test_every_class_is_restored_exactly_or_named(ck: Kernel) -> None:
    assert len(CASES) >= 60 and len({c.var for c in CASES}) == len(CASES)
    rows, failures = [], []
    for c in CASES:
        got, problems = run_case(ck, c)
        rows.append(f"  {c.label:36} {dist(c.module):22} {got}")
        if got.split(":")[0] != c.outcome:
            problems.append(f"outcome {got}, expected {c.outcome}")
        failures += [f"{c.label} ({c.var}): {p}" for p in problems]
    print("\nclass -> outcome\n" + "\n".join(rows))
    assert not failures, "\n".join(failures)
