"""The shipped notebooks run clean on the flowmetal kernel, and running them
leaves the history the tutorial describes.

Everything runs on a copy of ``notebooks/`` in a temporary folder, so the
repository is never written (no ``notebooks/.flowmetal/`` appears in it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_driver import query

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = "01-quickstart.ipynb"
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 240


def _env() -> dict[str, str]:
    """The caller's environment minus anything that would choose the history
    for the kernel: each test must see where the kernel puts it by itself."""
    env = dict(os.environ)
    for name in ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME", "FM_RESUME", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _copy_notebooks(dst: Path) -> Path:
    target = dst / "notebooks"
    shutil.copytree(NOTEBOOKS, target,
                    ignore=shutil.ignore_patterns(".flowmetal", ".ipynb_checkpoints", "__pycache__"))
    return target


def _is_history_query(source: str) -> bool:
    from fm_kernel.record.recorder import is_history_query

    return is_history_query(source)


def _code_cells(nb_path: Path) -> list[dict]:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            cells.append({**cell, "source": source})
    return cells


def _recorded_cells(nb_path: Path) -> list[str]:
    """Code cells that become steps: all but those that only ask about the
    history (`%fm log`, `%%sql` without -o)."""
    return [c["source"] for c in _code_cells(nb_path)
            if c["source"].strip() and not _is_history_query(c["source"])]


def _all_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _finished_steps(history: Path) -> int:
    """Steps that ran to an end: ok, or an error a tutorial raises on purpose.
    Read as flowmetal reads: what a killed kernel (nbval ends its kernels so)
    left in the step log is replayed first."""
    return query(history, "SELECT count(*) FROM steps WHERE status IN ('ok', 'error')")[0][0]


def _ok_steps(history: Path) -> int:
    return query(history, "SELECT count(*) FROM steps WHERE status = 'ok'")[0][0]


def _fm() -> str:
    exe = BIN / "fm"
    if exe.exists():
        return str(exe)
    found = shutil.which("fm", path=_env()["PATH"])
    if found is None:
        pytest.fail("the `fm` console script is not installed next to this Python")
    return found


# -- nbval ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nbval_run(tmp_path_factory: pytest.TempPathFactory):
    # Each notebook in a folder of its own, as users keep them: nbval kills
    # its kernels (an unclean end), so notebooks sharing a folder would share
    # a history and each would auto-resume the previous one's namespace.
    root = tmp_path_factory.mktemp("nbval")
    for nb in _all_notebooks():
        folder = root / nb.stem
        folder.mkdir()
        shutil.copy(nb, folder / nb.name)
        if (NOTEBOOKS / "data").is_dir():
            shutil.copytree(NOTEBOOKS / "data", folder / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", ".", "--nbval-kernel-name", "flowmetal",
         "-p", "no:cacheprovider", "-q"],
        cwd=root, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    return proc, root


def test_nbval_passes_on_flowmetal_kernel(nbval_run):
    proc, _ = nbval_run
    assert proc.returncode == 0, f"nbval failed:\n{proc.stdout}\n{proc.stderr}"
    n_cells = sum(len(_code_cells(nb)) for nb in _all_notebooks())
    assert f"{n_cells} passed" in proc.stdout, proc.stdout


def test_nbval_history_lands_in_kernel_cwd(nbval_run):
    # nbval starts the kernel in the notebook's folder and does not set
    # JPY_SESSION_NAME, so the kernel does not know the notebook's path: the
    # history is that kernel session's own, <kernel cwd>/.flowmetal/session-*.duckdb.
    _, root = nbval_run
    for nb in _all_notebooks():
        assert len(list((root / nb.stem / ".flowmetal").glob("session-*.duckdb"))) == 1
        assert not (root / nb.stem / ".flowmetal" / f"{nb.name}.duckdb").exists()


def test_nbval_run_records_every_cell_as_a_step(nbval_run):
    _, root = nbval_run
    for nb in _all_notebooks():
        history, = (root / nb.stem / ".flowmetal").glob("session-*.duckdb")
        assert _finished_steps(history) == len(_recorded_cells(nb)), nb.name


# -- fm run / fm log -----------------------------------------------------------


def test_fm_run_executes_and_records_quickstart(tmp_path: Path):
    notebooks = _copy_notebooks(tmp_path)
    source = notebooks / QUICKSTART
    before = source.read_bytes()
    out = tmp_path / "out.ipynb"

    proc = subprocess.run(
        [_fm(), "run", str(source), "-o", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"fm run failed:\n{proc.stdout}\n{proc.stderr}"
    assert source.read_bytes() == before, "fm run -o must leave the source notebook alone"

    executed = _code_cells(out)
    assert len(executed) == len(_code_cells(source))
    for cell in executed:
        assert cell["execution_count"] is not None, cell["source"]
        assert cell["outputs"], f"no outputs for cell: {cell['source'][:60]!r}"
        assert not [o for o in cell["outputs"] if o["output_type"] == "error"], cell["source"]
    assert any("image/png" in o.get("data", {}) for c in executed for o in c["outputs"]), \
        "the plot cell should produce an inline PNG"

    # `fm run` tells the kernel the notebook's path: the history is beside it.
    recorded = _recorded_cells(source)
    history = notebooks / ".flowmetal" / f"{QUICKSTART}.duckdb"
    assert history.exists(), sorted(str(p) for p in tmp_path.rglob("*.duckdb"))
    assert _ok_steps(history) == len(recorded)

    # A notebook path given to --history means that notebook's history.
    log = subprocess.run(
        [_fm(), "log", "--history", str(source)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    assert lines[0].split()[:4] == ["step", "branch", "parent", "status"]
    body = [ln for ln in lines[2:] if ln.strip()]
    assert len(body) == len(recorded), log.stdout
    for n, (line, code) in enumerate(zip(body, recorded), start=1):
        cols = line.split()
        # HEAD, as the record says, is starred: the last cell run
        assert cols[0] == ("*" if n == len(body) else "") + str(n), line
        assert "main" in cols and "ok" in cols, line
        assert code.splitlines()[0].strip()[:40] in line, (code, line)
