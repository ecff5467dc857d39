"""Every ```sql block in docs/sql.md runs, through the real `fm sql`, against
the history of a real kernel session; the ones whose answer is predictable
from that session are checked.

One scripted session for the module: prints, stderr, a 0.3 s cell, a
DataFrame created then changed in place, an error, a PNG display, a re-run
cell, then `%fm fork b2` and two cells on the fork. The kernel is shut down
before querying, so `fm sql` opens the file itself (test_sql.py covers the
path through a live kernel's endpoint).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from kernel_driver import Kernel

DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
FM = str(Path(sys.executable).parent / "fm")

# A 1x1 PNG, so the display needs nothing beyond IPython.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

# (code, expected status); step numbers below follow this order (the
# `%fm fork` cell is not a step).
SESSION: list[tuple[str, str]] = [
    ("import time\ntime.sleep(0.3)", "ok"),                                    # 1
    ("loss = 1.0\nprint('epoch 0')", "ok"),                                    # 2
    ("import sys\nprint('careful: low memory', file=sys.stderr)", "ok"),       # 3
    ("import pandas as pd\ndf = pd.DataFrame({'k': [1, 2, 3], 'v': [10.0, 20.0, 30.0]})\ndf", "ok"),  # 4
    ("loss = 0.5", "ok"),                                                      # 5
    ("df.loc[df.k == 2, 'v'] = 99.0\nloss = 0.25", "ok"),                      # 6
    ("raise RuntimeError('diverged')", "error"),                               # 7
    ("import base64\nfrom IPython.display import Image, display\n"
     f"display(Image(data=base64.b64decode('{PNG}')))", "ok"),                # 8
    ("n = 1", "ok"),                                                           # 9
    ("n = 1", "ok"),                                                           # 10
    ("%fm fork b2", "ok"),                                                     # (not a step)
    ("loss = 0.1", "ok"),                                                      # 11
    ("lr = 0.01", "ok"),                                                       # 12
]
N_STEPS = 12

# Imports that are slow the first time happen at kernel start-up (an IPython
# startup file; it runs before any cell and is not recorded), so that the
# 0.3 s sleep is reliably the slowest cell.
WARM_UP = ("import pandas, numpy, IPython.display, base64  # noqa\n"
           "import IPython.core.ultratb, stack_data, pygments.lexers, pygments.formatters  # noqa\n")


def cookbook() -> list[tuple[str, str]]:
    """(title, query) for every ```sql block, titled by the nearest ### above it."""
    text = DOC.read_text(encoding="utf-8")
    found, title = [], None
    for m in re.finditer(r"^### ([^\n]+)$|^```sql\n(.*?)^```", text, re.M | re.S):
        if m.group(1):
            title = m.group(1).strip()
        else:
            found.append((title or "(untitled)", m.group(2).strip()))
    return found


QUERIES = cookbook()


def fm_sql(history: Path, query: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}
    proc = subprocess.run([FM, "sql", query, "--history", str(history), "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, f"{query}\n-> {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cookbook")
    startup = root / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-warm.py").write_text(WARM_UP)
    path = root / "history.duckdb"
    with Kernel(env={"FM_HISTORY": str(path), "IPYTHONDIR": str(root / "ipython")}) as k:
        for code, status in SESSION:
            reply = k.execute(code)
            assert reply.status == status, (code, reply.content)
    return path


def test_the_doc_has_a_cookbook() -> None:
    titles = [t for t, _ in QUERIES]
    assert len(QUERIES) >= 12, titles
    assert len(set(titles)) == len(titles), "one query per ### title, please"
    assert set(EXPECTED) <= set(titles), set(EXPECTED) - set(titles)


def test_the_session_is_what_the_checks_assume(history: Path) -> None:
    rows = fm_sql(history, "SELECT step, branch, status FROM steps ORDER BY step")
    assert [r["step"] for r in rows] == list(range(1, N_STEPS + 1))
    assert [r["branch"] for r in rows] == ["main"] * 10 + ["b2"] * 2
    assert [r["status"] for r in rows].count("error") == 1


# -- what the predictable queries must return ---------------------------------

Rows = list[dict[str, Any]]


def _slowest(rows: Rows) -> None:
    assert len(rows) == 10
    assert "time.sleep(0.3)" in rows[0]["code"], rows[:3]
    assert rows[0]["ms"] >= 300
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)


def _error_rate(rows: Rows) -> None:
    assert sum(r["cells"] for r in rows) == N_STEPS
    assert sum(r["errors"] for r in rows) == 1
    assert 1 <= len(rows) <= 2  # the session may straddle an hour


def _errors(rows: Rows) -> None:
    assert [(r["step"], r["error_name"], r["error_value"]) for r in rows] == [(7, "RuntimeError", "diverged")]


def _loss(rows: Rows) -> None:
    assert [(r["step"], r["loss"]) for r in rows] == [(2, 1.0), (5, 0.5), (6, 0.25), (11, 0.1)]


def _df_changed(rows: Rows) -> None:
    # created at 4, mutated in place at 6
    assert [(r["step"], r["name"]) for r in rows] == [(4, "df"), (6, "df")]
    assert rows[0]["summary"] == "DataFrame 3×2"


def _before_after(rows: Rows) -> None:
    assert rows == [{"k": 2, "before": 20.0, "after": 99.0}]


def _stderr(rows: Rows) -> None:
    assert [(r["step"], r["stderr"]) for r in rows] == [(3, "careful: low memory\n")]


def _images(rows: Rows) -> None:
    assert [(r["step"], r["mime"], r["base64_chars"]) for r in rows] == [(8, "image/png", len(PNG))]


def _lineage(rows: Rows) -> None:
    assert [r["step"] for r in rows] == list(range(N_STEPS, 0, -1))
    assert [r["depth"] for r in rows] == list(range(N_STEPS))
    assert [r["branch"] for r in rows[:2]] == ["b2", "b2"] and rows[2]["branch"] == "main"


def _branches(rows: Rows) -> None:
    got = {r["name"]: (r["forked_at_step"], r["forked_from_branch"], r["head"]) for r in rows}
    assert got == {"main": (None, None, 10), "b2": (10, "main", 12)}
    assert rows[0]["name"] == "main"


def _sessions(rows: Rows) -> None:
    assert len(rows) == 1 and rows[0]["cells"] == N_STEPS
    assert rows[0]["busy_s"] >= 0.3 and rows[0]["span_s"] >= rows[0]["busy_s"] - 0.1


def _starts_stops(rows: Rows) -> None:
    assert [r["kind"] for r in rows] == ["kernel_started", "kernel_stopped"]
    assert rows[0]["kernel_id"] == rows[1]["kernel_id"] and rows[1]["clean"] == "true"


def _reruns(rows: Rows) -> None:
    assert rows == [{"code": "n = 1", "runs": 2, "steps": [9, 10]}]


def _latest_namespace(rows: Rows) -> None:
    names = {r["name"]: r for r in rows}
    assert {"df", "loss", "lr", "n", "pd", "time"} <= set(names)
    assert names["lr"]["changed"] is True and names["loss"]["changed"] is False
    assert names["loss"]["summary"] == "0.1"


def _largest(rows: Rows) -> None:
    assert rows[0]["name"] == "df" and rows[0]["at_step"] >= 4


def _not_stored(rows: Rows) -> None:
    assert rows == []


def _events_by_kind(rows: Rows) -> None:
    n = {r["kind"]: r["n"] for r in rows}
    assert n["step_ok"] == N_STEPS - 1 and n["step_error"] == 1
    assert n["kernel_started"] == n["kernel_stopped"] == 1 and n["fork"] == 1


def _empty(rows: Rows) -> None:
    assert rows == []  # no flows in this session; the query must still run


EXPECTED: dict[str, Callable[[Rows], None]] = {
    "Slowest cells": _slowest,
    "Error rate by hour": _error_rate,
    "Errors with their messages": _errors,
    "Value of a variable over steps": _loss,
    "Steps that changed a DataFrame": _df_changed,
    "A DataFrame before and after a step": _before_after,
    "Cells that printed to stderr": _stderr,
    "Outputs with images": _images,
    "The lineage of a step": _lineage,
    "Branches and where they fork": _branches,
    "Time spent per kernel session": _sessions,
    "Kernel starts and stops": _starts_stops,
    "Cells re-run with the same code": _reruns,
    "The namespace after the latest step": _latest_namespace,
    "Largest variables ever held": _largest,
    "Variables that could not be stored": _not_stored,
    "History at a glance: events by kind": _events_by_kind,
    "Flow steps that were retried": _empty,
    "Failed flow runs": _empty,
    "Flow runs that timed out": _empty,
    "Slowest flow steps on average": _empty,
}


@pytest.mark.parametrize("title,query", QUERIES, ids=[t for t, _ in QUERIES])
def test_cookbook_query(history: Path, title: str, query: str) -> None:
    rows = fm_sql(history, query)
    check = EXPECTED.get(title)
    if check is not None:
        check(rows)


def test_parameters_bound_from_the_namespace_and_a_hint_for_live_variables(tmp_path):
    """`$name` binds a Python value (never pasted into the text); an unknown
    `$name` and a live DataFrame named as a table each get one clear line."""
    from kernel_driver import Kernel

    with Kernel(env={"FM_HISTORY": str(tmp_path / "h.duckdb")}) as k:
        for code in ("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})", "x = 1", "y = 2"):
            assert k.execute(code).status == "ok"
        r = k.execute("since = 1\nquote = \"it's $since\"")
        assert r.status == "ok"
        r = k.execute("%%sql -o got\nSELECT step, '$since' AS literal FROM steps WHERE step > $since ORDER BY step")
        assert r.status == "ok", r.content
        out = k.execute("print(list(got.step), set(got.literal))").text()
        assert out.strip() == "[2, 3, 4] {'$since'}", out
        bad = k.execute("%%sql\nSELECT * FROM steps WHERE step > $nowhere")
        assert bad.status == "error" and "$nowhere names no variable" in bad.content["evalue"]
        live = k.execute("%%sql\nSELECT * FROM df")
        assert live.status == "error"
        assert "frame('df', STEP)" in live.content["evalue"] and "live namespace" in live.content["evalue"]
        past = k.execute("%%sql -o old\nSELECT sum(a) AS s FROM frame('df', 1)")
        assert past.status == "ok" and k.execute("print(int(old.s[0]))").text().strip() == "6"
