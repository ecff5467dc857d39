"""States stored as changes, through a real kernel: over cells that rebind,
add and delete names among 400, change 200 at once, rewind, fork and come
back, the `variables` view holds exactly the namespace each step left
(taken from the kernel after every cell), a new kernel restores any of
those steps from the record alone, and a one-name cell stores one name."""

from __future__ import annotations

import ast
from pathlib import Path

from kernel_driver import Kernel, check, query

# the test's own names (a0…, b0…); the rest of a namespace is not its business
OWN = "{k: v for k, v in globals().items() if k[:1] in 'ab' and k[1:].isdigit()}"
HEAD = "__import__('fm_kernel.runtime', fromlist=['current']).current().head"


def _expr(reply, key: str):
    return ast.literal_eval(reply.content["user_expressions"][key]["data"]["text/plain"])


def _now(k: Kernel) -> tuple[int, dict[str, int]]:
    """HEAD's step and the test's names as the namespace holds them (not a step)."""
    r = k.execute("", silent=True, user_expressions={"h": HEAD, "ns": OWN})
    return _expr(r, "h"), _expr(r, "ns")


def _session(k: Kernel, truth: dict[int, dict[str, int]]) -> dict[str, int]:
    def cell(code: str) -> int:
        check(k, code)
        step, ns = _now(k)
        truth[step] = ns
        return step

    marks = {"start": cell("for i in range(400):\n    globals()[f'a{i}'] = i")}
    for j in range(1, 25):
        cell({0: f"a{j} = -{j}", 1: f"b{j} = {j}", 2: "pass", 3: f"del a{300 + j}",
              4: f"a{j}, b{j} = {j * 7}, -{j}"}[j % 5])
    marks["middle"] = max(truth)
    cell("del a7\na7 = 7")  # gone and back with the same value
    marks["wide"] = cell("for i in range(200):\n    globals()[f'a{i}'] = i * 10")
    for j in range(25, 35):
        cell(f"b{j} = {j}")
    check(k, f"%fm rewind {marks['middle']}")
    assert _now(k)[1] == truth[marks["middle"]]
    for j in range(35, 40):  # grows from the old state: a branch of its own
        cell(f"a{j} = {j * 3}\nb{j} = {j}")
    check(k, f"%fm fork exp --from {marks['wide']}")
    assert _now(k)[1] == truth[marks["wide"]]
    for j in range(40, 45):
        cell(f"b{j} = {j}\ndel a{100 + j}")
    check(k, "%fm checkout main")
    cell("b99 = 99")
    return marks


def test_views_and_restores_over_states_stored_as_changes(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    truth: dict[int, dict[str, int]] = {}
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        marks = _session(k, truth)
    rows = query(history, "SELECT step, name, value::INTEGER FROM variables"
                          " WHERE regexp_matches(name, '^[ab][0-9]+$')")
    held: dict[int, dict[str, int]] = {}
    for step, name, value in rows:
        held.setdefault(step, {})[name] = value
    assert {s: held.get(s, {}) for s in truth} == truth
    # a later kernel restores from the record alone (no state kept in memory)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        for step in (marks["start"] + 3, marks["middle"], marks["wide"] + 4, max(truth)):
            check(k, f"%fm checkout {step}")
            assert _now(k)[1] == truth[step], step
    # what a step stored is what its cell changed: `b25 = 25` among 400 names
    one = marks["wide"] + 1
    assert query(history, "SELECT s.base IS NOT NULL, len(s.names) FROM fm_step_records r"
                          " JOIN fm_states s ON s.id = r.state_id WHERE r.step = ?"
                          " AND r.state_id IS NOT NULL", [one]) == [(True, 1)]
