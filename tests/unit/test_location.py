"""Where a history lives (FM_HISTORY, then beside the notebook, then the
working directory) and where a kernel records when that place is taken."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from fm_kernel.record import location
from fm_kernel.record.store import SCHEMA_VERSION, Store


def test_fm_history_wins_over_everything(tmp_path: Path) -> None:
    env = {"FM_HISTORY": str(tmp_path / "h.duckdb"), "FM_NOTEBOOK": "a.ipynb",
           "JPY_SESSION_NAME": "b.ipynb"}
    assert location.history_path(env, tmp_path) == tmp_path / "h.duckdb"


def test_fm_history_expands_the_home_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert location.history_path({"FM_HISTORY": "~/x.duckdb"}, tmp_path) == tmp_path / "x.duckdb"


def test_a_relative_fm_history_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = location.history_path({"FM_HISTORY": "rel/h.duckdb"}, tmp_path)
    assert path.is_absolute() and path == tmp_path / "rel" / "h.duckdb"


def test_the_history_goes_beside_the_notebook(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "analysis.ipynb").write_text("{}")
    # fm run sets FM_NOTEBOOK; it wins over a Jupyter server's JPY_SESSION_NAME
    env = {"FM_NOTEBOOK": "sub/analysis.ipynb", "JPY_SESSION_NAME": "other.ipynb"}
    assert location.history_path(env, tmp_path) == \
        tmp_path / "sub" / ".flowmetal" / "analysis.ipynb.duckdb"


def test_a_server_relative_session_name_keeps_only_the_file_name(tmp_path: Path) -> None:
    # Jupyter passes the path from its root and starts the kernel in the
    # notebook's folder, so "work/nb.ipynb" does not exist relative to cwd.
    env = {"JPY_SESSION_NAME": "work/nb.ipynb"}
    assert location.notebook_path(env, tmp_path) == tmp_path / "nb.ipynb"
    assert location.history_path(env, tmp_path) == tmp_path / ".flowmetal" / "nb.ipynb.duckdb"


def test_an_absolute_notebook_path_is_used_as_is(tmp_path: Path) -> None:
    nb = tmp_path / "deep" / "nb.ipynb"
    assert location.notebook_path({"FM_NOTEBOOK": str(nb)}, Path("/")) == nb


def test_without_any_hint_the_history_is_in_the_working_directory(tmp_path: Path) -> None:
    assert location.notebook_path({}, tmp_path) is None
    assert location.history_path({}, tmp_path) == tmp_path / ".flowmetal" / "history.duckdb"


def test_open_history_opens_the_named_file_without_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "new" / "h.duckdb"
    store, notice = location.open_history(path, "abcdef0123")
    try:
        assert notice is None and store.path == path and path.exists()
    finally:
        store.close()


def test_a_history_from_a_newer_version_is_never_touched(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE fm_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    conn.execute("INSERT INTO fm_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION + 1)])
    conn.close()
    before = path.read_bytes()
    store, notice = location.open_history(path, "abcdef0123")
    try:
        alt = tmp_path / "h.abcdef01.duckdb"
        assert store.path == alt
        assert notice is not None and str(alt) in notice and "newer" in notice.lower()
    finally:
        store.close()
    assert path.read_bytes() == before


def test_an_unwritable_place_falls_back_to_a_substitute_and_says_where(tmp_path: Path,
                                                                       make_step) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "h.duckdb"  # its folder cannot be made, even by root
    store, notice = location.open_history(path, "abcdef0123")
    try:
        # a private temp folder, or memory when even that is not safe to use
        assert store.path != path
        assert notice is not None and notice.startswith(f"flowmetal: cannot write {path}")
        assert notice.endswith(f"records to {store.path}")
        store.append_step(make_step(1))
        assert store.step(1).code == "x = 1"
    finally:
        store.close()
        if str(store.path) != ":memory:":
            shutil.rmtree(store.path.parent)


def test_opening_read_only_creates_nothing(tmp_path: Path) -> None:
    from fm_kernel.errors import HistoryError

    path = tmp_path / "none" / "h.duckdb"
    with pytest.raises(HistoryError, match="no history at"):
        Store.open(path, read_only=True)
    assert not path.parent.exists()
