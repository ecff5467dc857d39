"""Bad input everywhere a user types: %fm arguments, SQL, the fm command.
Each gets one clear line naming what was wrong; the kernel keeps its state;
the CLI exits 2 for bad usage and 1 for a refused or failed request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel  # noqa: E402

FM = str(Path(sys.executable).parent / "fm")

BAD_MAGICS = [
    "%fm", "%fm nope", "%fm log -n -3", "%fm log --bogus", "%fm show", "%fm show abc",
    "%fm show 99999", "%fm rewind", "%fm rewind -1", "%fm rewind 99999", "%fm undo 0",
    "%fm undo x", "%fm fork", "%fm fork 'a b'", "%fm fork 123", "%fm fork main",
    "%fm checkout", "%fm checkout nowhere", "%fm diff 1", "%fm diff a b", "%fm inspect z",
    "%fm export", "%fm runs -n x", "%fm log 'unclosed", "%sql SELEC 1",
    "%sql DELETE FROM fm_events", "%sql SELECT * FROM read_csv('/etc/passwd')",
    "%sql SELECT * FROM frame('nothing', 1)", "%%sql -o 9x\nSELECT 1", "%sql",
]


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(path)}) as kernel:
        kernel.execute("kept = [1, 2, 3]")
        kernel.history = path  # type: ignore[attr-defined]
        yield kernel


@pytest.mark.parametrize("line", BAD_MAGICS)
def test_bad_magic_arguments_are_one_line(k: Kernel, line: str) -> None:
    r = k.execute(line)
    text = r.text() + "".join("".join(m["content"].get("traceback", []))
                              for m in r.iopub if m["msg_type"] == "error")
    if line == "%fm":  # bare %fm lists every sub-command, one line each
        assert r.status == "ok" and "%fm log" in text and "%fm CMD -h" in text
        return
    assert r.status == "error", (line, text)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, (line, text)
    assert "Traceback" not in text and "File \"" not in text, (line, text)
    assert k.execute("assert kept == [1, 2, 3]").status == "ok"


def env() -> dict[str, str]:
    return {key: v for key, v in os.environ.items() if not key.startswith(("FM_", "JPY_"))}


BAD_CLI = [
    ([], 2), (["nope"], 2), (["log", "--branch"], 2), (["run"], 2),
    (["run", "missing.ipynb"], 2), (["run", "x.ipynb", "-p", "only-name"], 2),
    (["sql"], 2), (["sql", "SELECT 1", "--format", "xml"], 2),
    (["install", "--user", "--sys-prefix"], 2), (["import"], 2), (["signal", "r"], 2),
    (["export", "-o"], 2),
]


@pytest.mark.parametrize("args,code", BAD_CLI, ids=[" ".join(a) or "(none)" for a, _ in BAD_CLI])
def test_bad_cli_usage_exits_2_with_one_message(tmp_path: Path, args: list[str], code: int) -> None:
    r = subprocess.run([FM, *args], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60)
    assert r.returncode == code, (args, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(("fm", "usage")), r.stderr


def test_refused_cli_requests_exit_1_with_one_line(k: Kernel, tmp_path: Path) -> None:
    history = str(k.history)  # held by the live kernel: answered through its endpoint
    cases = [
        ["sql", "DROP TABLE fm_events", "--history", history],
        ["sql", "SELEC", "--history", history],
        ["sql", "SELECT * FROM read_text('/etc/hostname')", "--history", history],
        ["log", "--history", str(tmp_path / "none.duckdb")],
        ["import", str(tmp_path / "not-a-bundle.fmb"), "--history", str(tmp_path / "x.duckdb")],
        ["trust", str(tmp_path / "none.duckdb")],
        ["signal", "no-such-run", "go", "--history", history],
        ["signal", "r", "go", "--data", "{bad", "--history", history],
    ]
    (tmp_path / "not-a-bundle.fmb").write_text("just text")
    for args in cases:
        r = subprocess.run([FM, *args], capture_output=True, text=True, env=env(), timeout=60)
        assert r.returncode == 1, (args, r.returncode, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("fm "), (args, r.stderr)
    assert k.execute("assert kept == [1, 2, 3]").status == "ok"
