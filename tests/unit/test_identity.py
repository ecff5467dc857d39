"""How a kernel chooses its history before it opens it (record/identity.py):
the plan at start, VS Code's silent assignment, session histories, and what
counts as a history query once another extension owns `sql`."""

from __future__ import annotations

from pathlib import Path

from fm_kernel.record import identity, location
from fm_kernel.record.recorder import is_history_query
from fm_kernel.record.store import StepRecord, Store, utcnow


def _history(path: Path, cell_id: str) -> None:
    store = Store.open(path)
    try:
        store.append_step(StepRecord(step=1, branch="main", parent=None, kernel_id="k",
                                     cell_id=cell_id, execution_count=1, code="a = 1",
                                     status="ok", started_at=utcnow(), finished_at=utcnow()), ())
    finally:
        store.close()


def test_fm_history_and_a_known_notebook_open_at_once(tmp_path: Path) -> None:
    p = identity.plan({"FM_HISTORY": str(tmp_path / "h.duckdb")}, tmp_path)
    assert p.path == tmp_path / "h.duckdb" and p.explicit
    p = identity.plan({"JPY_SESSION_NAME": "dir/nb.ipynb"}, tmp_path)
    assert p.path == tmp_path / ".flowmetal" / "nb.ipynb.duckdb"


def test_a_new_notebook_beside_other_histories_waits_for_its_first_cell(tmp_path: Path) -> None:
    _history(tmp_path / ".flowmetal" / "old.ipynb.duckdb", "c1")
    p = identity.plan({"JPY_SESSION_NAME": "new.ipynb"}, tmp_path)
    assert p.path is None and p.notebook == tmp_path / "new.ipynb"
    b = identity.bind(p, "0123456789", "c1")  # old.ipynb is gone: a rename
    assert b.path == tmp_path / ".flowmetal" / "new.ipynb.duckdb" and b.path.exists()
    assert b.notice == "flowmetal: renamed from old.ipynb: continuing its history"
    assert not (tmp_path / ".flowmetal" / "old.ipynb.duckdb").exists()


def test_a_copy_is_not_renamed_and_is_told_about_adopt(tmp_path: Path) -> None:
    (tmp_path / "orig.ipynb").write_text("{}")
    _history(tmp_path / ".flowmetal" / "orig.ipynb.duckdb", "c1")
    b = identity.bind(identity.plan({"JPY_SESSION_NAME": "copy.ipynb"}, tmp_path), "k", "c1")
    assert b.path == tmp_path / ".flowmetal" / "copy.ipynb.duckdb" and not b.path.exists()
    assert "`%fm adopt orig.ipynb`" in b.notice
    assert (tmp_path / ".flowmetal" / "orig.ipynb.duckdb").exists()


def test_without_a_notebook_the_session_gets_its_own_file(tmp_path: Path) -> None:
    p = identity.plan({}, tmp_path)
    assert p.path is None and p.notebook is None
    first = identity.bind(p, "abcdef0123", None).path
    assert first.parent == tmp_path / ".flowmetal" and first.name.startswith("session-")
    assert first.name.endswith("-abcdef01.duckdb")
    first.parent.mkdir()
    first.touch()
    assert location.session_path(tmp_path, "abcdef0123") == first  # a restart finds it
    assert location.session_path(tmp_path, "99999999ff") != first


def test_vscode_names_the_notebook_in_a_silent_assignment() -> None:
    assert identity.vscode_notebook("__vsc_ipynb_file__ = '/a/b/nb.ipynb'") == Path("/a/b/nb.ipynb")
    assert identity.vscode_notebook('x = 1\n__vsc_ipynb_file__ = r"C:\\w\\nb.ipynb"\n') \
        == Path("C:\\w\\nb.ipynb")
    assert identity.vscode_notebook("__vsc_ipynb_file__ = f()") is None
    assert identity.vscode_notebook("print('__vsc_ipynb_file__')") is None


def test_sql_cells_are_history_queries_only_while_the_magic_is_ours() -> None:
    assert is_history_query("%%sql\nSELECT 1")
    assert not is_history_query("%%sql\nCREATE TABLE t (x INT)", cell_sql_ours=False)
    assert is_history_query("%%fmsql\nSELECT 1", cell_sql_ours=False)
    assert is_history_query("%sql SELECT 1")
    assert not is_history_query("%sql SELECT 1", line_sql_ours=False)
    assert is_history_query("%fm sql SELECT 1", line_sql_ours=False)
    assert not is_history_query("%%time\n%fm log")
