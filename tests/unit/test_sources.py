"""fm.files and fm.poll without a kernel: what a file's identity is, which
files a scan takes, what a poll function may answer, and what is refused
where the source is made (tests/test_event_sources.py has the kills)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

from fm_kernel.errors import UsageError
from fm_kernel.flows.sources import FileSource, PollSource, file_id, files, poll


def _ids(src: FileSource) -> dict[str, str]:
    return {Path(data["path"]).name: d for d, data in src.scan()}


def test_a_file_is_its_path_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("x")
    first = file_id(str(f), f.stat())
    assert first == file_id(str(f), f.stat()) and len(first) <= 200
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
    assert file_id(str(f), f.stat()) != first  # touched: a new arrival
    f.write_text("xy")
    assert file_id(str(tmp_path / "b.csv"), f.stat()) != file_id(str(f), f.stat())


def test_a_scan_takes_settled_regular_files_not_dot_names(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    old = time.time() - 10
    for name in ("a.csv", "b.csv", ".c.csv.tmp", "note.txt"):
        (tmp_path / "in" / name).write_text(name)
        os.utime(tmp_path / "in" / name, (old, old))
    (tmp_path / "in" / "dir.csv").mkdir()
    (tmp_path / "in" / "fresh.csv").write_text("being written")
    src = FileSource(str(tmp_path / "in" / "*.csv"), settle=5)
    assert sorted(_ids(src)) == ["a.csv", "b.csv"]  # fresh.csv is not 5 s old yet
    src._seen.add(_ids(src)["a.csv"])
    assert sorted(_ids(src)) == ["b.csv"]
    payload = dict(src.scan())[_ids(src)["b.csv"]]
    assert payload == {"path": str(tmp_path / "in" / "b.csv"), "size": 5, "mtime": pytest.approx(old)}


def test_a_relative_glob_is_fixed_to_the_directory_it_was_made_in(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = files("incoming/*.csv")
    assert src.pattern == str(tmp_path / "incoming" / "*.csv")
    assert src.label == f"files:{tmp_path}/incoming/*.csv"
    monkeypatch.chdir("/")
    again = pickle.loads(pickle.dumps(src))  # a flow restored in a kernel started elsewhere
    assert again.pattern == src.pattern and (again.every, again.settle) == (1.0, 1.0)


def test_a_poll_answer_must_be_a_pair_of_json() -> None:
    assert PollSource(lambda c: (["a", {"b": 1}], 3)).call(None) == (["a", {"b": 1}], 3)
    assert PollSource(lambda c: (None, c)).call(7) == ([], 7)
    with pytest.raises(UsageError, match="expected a pair"):
        PollSource(lambda c: ["a", "b", "c"]).call(None)
    with pytest.raises(UsageError, match="item 1 .* plain JSON"):
        PollSource(lambda c: (["a", object()], 1)).call(None)
    with pytest.raises(UsageError, match="cursor .* plain JSON"):
        PollSource(lambda c: ([], float("nan"))).call(None)


@pytest.mark.parametrize("make, match", [
    (lambda: files(""), "expected a glob"),
    (lambda: files("*.csv", every=0), "every=0"),
    (lambda: files("*.csv", settle=-1), "settle=-1"),
    (lambda: files("*.csv", name="no spaces"), "not allowed"),
    (lambda: poll("not a function"), "expected a function"),
    (lambda: poll(len, every=True), "every=True"),
    (lambda: poll(len, start={1, 2}), "start cursor .* plain JSON"),
])
def test_what_is_refused_where_the_source_is_made(make, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        make()
