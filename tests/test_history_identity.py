"""The history follows the notebook (docs/where-history-lives.md): a rename
continues it, a copy adopts it, VS Code's `__vsc_ipynb_file__` and the batch
runners land it beside the notebook or in a session history of its own, and
a jupysql `%%sql` cell is a step. Real kernels, real runners, real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kernel_driver import Kernel, Reply, query

BIN = Path(sys.executable).parent


def run_cell(k: Kernel, code: str, cell_id: str) -> Reply:
    """An execute request as JupyterLab sends it: the cell's id in its metadata."""
    msg = k.kc.session.msg("execute_request", {
        "code": code, "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True}, metadata={"cellId": cell_id})
    k.kc.shell_channel.send(msg)
    r = k.collect(msg["header"]["msg_id"])
    assert r.status == "ok", (code, r.content.get("evalue"), r.text())
    return r


def codes(history: Path) -> list[str]:
    return [r[0] for r in query(history, "SELECT code FROM steps ORDER BY step")]


def notebook(path: Path, *sources: str) -> Path:
    cells = [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": s,
              "outputs": [], "execution_count": None} for i, s in enumerate(sources)]
    path.write_text(json.dumps({"cells": cells, "metadata": {
        "kernelspec": {"name": "flowmetal", "display_name": "Flowmetal", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    return path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME")}


def test_a_renamed_notebook_continues_its_history_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "other.ipynb").write_text("{}")
    with Kernel(env={"JPY_SESSION_NAME": "work/other.ipynb"}, cwd=tmp_path) as k:
        run_cell(k, "o = 0", "other-1")  # a neighbour's history: never taken
    notebook(tmp_path / "old.ipynb", "a = 1", "b = a + 1")
    with Kernel(env={"JPY_SESSION_NAME": "work/old.ipynb"}, cwd=tmp_path) as k:
        run_cell(k, "a = 1", "c0")
        run_cell(k, "b = a + 1", "c1")
    (tmp_path / "old.ipynb").rename(tmp_path / "new.ipynb")
    with Kernel(env={"JPY_SESSION_NAME": "work/new.ipynb"}, cwd=tmp_path) as k:
        r = run_cell(k, "c = 3", "c0")
        assert r.text().count("renamed from old.ipynb: continuing its history") == 1, r.text()
        assert "renamed" not in run_cell(k, "d = 4", "c1").text()
    flow = tmp_path / ".flowmetal"
    assert not (flow / "old.ipynb.duckdb").exists()
    assert codes(flow / "new.ipynb.duckdb") == ["a = 1", "b = a + 1", "c = 3", "d = 4"]
    assert query(flow / "new.ipynb.duckdb", "SELECT parent FROM steps WHERE step = 3") == [(2,)]
    assert query(flow / "new.ipynb.duckdb", "SELECT payload->>'from' FROM fm_events"
                 " WHERE kind = 'notebook_renamed'") == [("old.ipynb",)]
    assert codes(flow / "other.ipynb.duckdb") == ["o = 0"]


def test_a_copy_starts_empty_and_adopt_continues_the_original_as_a_fork(tmp_path: Path) -> None:
    notebook(tmp_path / "orig.ipynb", "a = 1", "b = a * 10")
    with Kernel(env={"JPY_SESSION_NAME": "orig.ipynb"}, cwd=tmp_path) as k:
        run_cell(k, "a = 1", "c0")
        run_cell(k, "b = a * 10", "c1")
    shutil.copy(tmp_path / "orig.ipynb", tmp_path / "copy.ipynb")
    with Kernel(env={"JPY_SESSION_NAME": "copy.ipynb"}, cwd=tmp_path) as k:
        first = run_cell(k, "%fm log", "c0").text()
        assert "%fm adopt orig.ipynb" in first, first  # the copy is told how to continue
        out = run_cell(k, "%fm adopt orig.ipynb", "c0").text()
        assert "adopted orig.ipynb (2 steps" in out and "new cells go on copy" in out, out
        assert run_cell(k, "print(a, b)", "c2").text() == "1 10\n"
        run_cell(k, "c = b + 1", "c3")
    flow = tmp_path / ".flowmetal"
    assert codes(flow / "orig.ipynb.duckdb") == ["a = 1", "b = a * 10"]  # untouched
    rows = query(flow / "copy.ipynb.duckdb",
                 "SELECT step, branch, parent, code FROM steps ORDER BY step")
    assert rows[:2] == [(1, "main", None, "a = 1"), (2, "main", 1, "b = a * 10")]
    assert rows[2:] == [(3, "copy", 2, "print(a, b)"), (4, "copy", 3, "c = b + 1")]
    # the next kernel on the copy is on the fork, where the last one left it
    with Kernel(env={"JPY_SESSION_NAME": "copy.ipynb"}, cwd=tmp_path) as k:
        status = run_cell(k, "%fm status", "s").text()
        assert re.search(r"^HEAD\s+copy @ step 4", status, re.M), status


def test_jupysql_owns_sql_after_it_is_loaded_and_its_cells_are_steps(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}, cwd=tmp_path) as k:
        assert k.execute("%%sql\nSELECT 1 AS one").status == "ok"  # ours: not a step
        # what `%load_ext sql` does: another `sql` cell and line magic
        load = k.execute(
            "from IPython.core.magic import register_cell_magic, register_line_magic\n"
            "ran = []\n"
            "@register_cell_magic('sql')\n"
            "def sql(line, cell):\n    ran.append(cell.strip())\n"
            "@register_line_magic('sql')\n"
            "def sql_line(line):\n    ran.append(line)\n")
        assert "%%sql now belongs to" in load.text() and "%%fmsql" in load.text(), load.text()
        made = k.execute("%%sql\nCREATE TABLE t (x INT)")
        assert made.status == "ok" and "belongs to" not in made.text()  # said once
        assert k.execute("%sql INSERT INTO t VALUES (1)").status == "ok"
        mine = k.execute("%%fmsql\nSELECT count(*) AS n FROM steps")
        assert mine.status == "ok", mine.content
        assert k.execute("%fm sql SELECT count(*) FROM steps").status == "ok"
        assert k.execute("print(ran)").text() == "['CREATE TABLE t (x INT)', 'INSERT INTO t VALUES (1)']\n"
    got = codes(history)
    assert got[1:] == ["%%sql\nCREATE TABLE t (x INT)", "%sql INSERT INTO t VALUES (1)", "print(ran)"]


def test_vscode_names_the_notebook_and_the_history_lands_beside_it(tmp_path: Path) -> None:
    nb_dir, cwd = tmp_path / "project", tmp_path / "elsewhere"
    nb_dir.mkdir()
    cwd.mkdir()
    nb = notebook(nb_dir / "nb.ipynb", "v = 1")
    with Kernel(cwd=cwd) as k:
        # what VS Code sends right after start, then the cells
        k.execute(f"__vsc_ipynb_file__ = {str(nb)!r}", silent=True)
        assert k.execute("v = 1").status == "ok"
        assert k.execute("w = v + 1").status == "ok"
    assert codes(nb_dir / ".flowmetal" / "nb.ipynb.duckdb") == ["v = 1", "w = v + 1"]
    assert not (cwd / ".flowmetal").exists()


def test_without_a_notebook_each_kernel_session_gets_its_own_history(tmp_path: Path) -> None:
    for code in ("x = 1", "y = 2"):
        with Kernel(cwd=tmp_path) as k:
            k.execute(code)
    flow = tmp_path / ".flowmetal"
    sessions = sorted(flow.glob("session-*.duckdb"))
    assert not (flow / "history.duckdb").exists()
    assert sorted(codes(h)[0] for h in sessions) == ["x = 1", "y = 2"]


def test_batch_runners_in_one_folder_never_share_a_history(tmp_path: Path) -> None:
    env = clean_env()
    notebook(tmp_path / "a.ipynb", "x = 'a'", "x * 2")
    notebook(tmp_path / "b.ipynb", "y = 'b'", "y * 3")
    notebook(tmp_path / "in.ipynb", "z = 'in'")
    for cmd in ([str(BIN / "jupyter"), "execute", "--kernel_name=flowmetal", "a.ipynb"],
                [str(BIN / "jupyter"), "nbconvert", "--execute", "--to", "notebook",
                 "--ExecutePreprocessor.kernel_name=flowmetal", "b.ipynb"],
                [str(BIN / "papermill"), "-k", "flowmetal", "--engine", "flowmetal",
                 "in.ipynb", "out.ipynb"]):
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, (cmd, p.stderr[-2000:])
    flow = tmp_path / ".flowmetal"
    assert not (flow / "history.duckdb").exists()
    assert codes(flow / "in.ipynb.duckdb") == ["z = 'in'"]  # the engine named the notebook
    sessions = {tuple(codes(h)) for h in flow.glob("session-*.duckdb")}
    assert sessions == {("x = 'a'", "x * 2"), ("y = 'b'", "y * 3")}
    # `fm log --history` for a notebook run without its name: the session that ran it
    for nb, mine in (("a.ipynb", "x = 'a'"), ("b.ipynb", "y = 'b'")):
        p = subprocess.run([str(BIN / "fm"), "log", "--history", nb], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        named = [h for h in flow.glob("session-*.duckdb") if str(h) in p.stderr]
        assert p.returncode != 0 and len(named) == 1 and codes(named[0])[0] == mine, p.stderr
    p = subprocess.run([str(BIN / "fm"), "log", "--history", "in.ipynb"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "z = 'in'" in p.stdout, p.stderr
