"""`fm run` with real processes: parameters as papermill injects them, resume
after kill -9 without repeating completed cells, changed cells, --fresh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

FM = str(Path(sys.executable).parent / "fm")


def make_notebook(path: Path, slow_cell: int | None = None, body: str | None = None) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "flowmetal", "display_name": "Flowmetal (Python 3)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("alpha = 1\nlabel = 'default'\nscale = 0.5")
    params.metadata["tags"] = ["parameters"]
    cells = [params]
    for i in range(1, 7):
        code = (f"with open('side-effects.txt', 'a') as f:\n    f.write('cell{i}\\n')\n"
                f"v{i} = alpha * {i} * scale\nprint(label, v{i})")
        if i == slow_cell:
            code += "\nimport time\ntime.sleep(60)"
        if body and i == 4:
            code = body
        cells.append(nbformat.v4.new_code_cell(code))
    nb.cells = cells
    nbformat.write(nb, path)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}


def fm_run(nb: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FM, "run", str(nb), *args], capture_output=True, text=True,
                          env=env(), cwd=nb.parent, timeout=timeout)


def side_effects(folder: Path) -> list[str]:
    return (folder / "side-effects.txt").read_text().split()


def streams(nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    return ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
            for c in nb.cells if c.cell_type == "code"]


def test_parameters_are_injected_as_papermill_does(tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from fm_kernel.cli import parameters

    src = tmp_path / "p.ipynb"
    make_notebook(src)
    values = {"alpha": 3, "label": "run \"A\"", "scale": 0.25, "flags": [True, None],
              "opts": {"k": "v", "n": 2}}
    theirs = parameterize_notebook(load_notebook_node(str(src)), values)
    ours = nbformat.read(src, as_version=4)
    parameters.inject(ours, values)
    pick = lambda nb: [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert [c.source for c in pick(ours)] == [c.source for c in pick(theirs)]
    assert [c.source for c in ours.cells] == [c.source for c in theirs.cells]

    # and executing gives what papermill's run gives, cell by cell
    pm_out = tmp_path / "pm" / "out.ipynb"
    pm_out.parent.mkdir()
    papermill.execute_notebook(str(src), str(pm_out), parameters={"alpha": 3, "label": "x"},
                               kernel_name="python3", cwd=str(pm_out.parent), progress_bar=False)
    fm_out = tmp_path / "fm-out.ipynb"
    r = fm_run(src, "-o", str(fm_out), "-p", "alpha", "3", "-r", "label", "x")
    assert r.returncode == 0, r.stderr
    assert streams(fm_out) == streams(pm_out)
    assert streams(fm_out)[2] == "x 1.5\n"


def test_kill_mid_run_then_resume_never_repeats_completed_cells(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, slow_cell=4)
    out = tmp_path / "out.ipynb"
    proc = subprocess.Popen([FM, "run", str(src), "-o", str(out), "-p", "alpha", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (tmp_path / "side-effects.txt").exists() and "cell4" in side_effects(tmp_path):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert side_effects(tmp_path) == ["cell1", "cell2", "cell3", "cell4"]

    make_notebook(src)  # the slow cell is fixed; cells 1-3 are unchanged
    r = fm_run(src, "-o", str(out), "-p", "alpha", "2")
    assert r.returncode == 0, r.stderr
    assert "resuming after cell 5 of 8" in r.stderr  # parameters, injected, cell1..cell3
    # cells 1-3 never ran twice; the interrupted cell 4 ran again, then 5 and 6
    assert side_effects(tmp_path) == ["cell1", "cell2", "cell3", "cell4", "cell4", "cell5", "cell6"]
    texts = streams(out)
    assert texts[2:] == [f"default {2 * i * 0.5}\n" for i in range(1, 7)]  # complete, in order


def test_a_changed_cell_and_everything_after_it_run_again(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, body="raise ValueError('cell 4 is broken')")
    r = fm_run(src, "-o", str(tmp_path / "out.ipynb"))
    assert r.returncode == 1
    assert "cell 4 is broken" in r.stderr and "raise ValueError" in r.stderr  # source and error
    assert side_effects(tmp_path) == ["cell1", "cell2", "cell3"]
    make_notebook(src)  # the user fixes cell 4
    r = fm_run(src, "-o", str(tmp_path / "out.ipynb"))
    assert r.returncode == 0, r.stderr
    assert side_effects(tmp_path) == ["cell1", "cell2", "cell3", "cell4", "cell5", "cell6"]
    # a finished run with the same parameters runs afresh next time
    r = fm_run(src, "-o", str(tmp_path / "out.ipynb"))
    assert r.returncode == 0 and "resuming" not in r.stderr
    assert side_effects(tmp_path).count("cell1") == 2


def test_fresh_ignores_the_interrupted_run(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, body="raise RuntimeError('stop here')")
    assert fm_run(src, "-o", str(tmp_path / "o.ipynb")).returncode == 1
    make_notebook(src)
    r = fm_run(src, "-o", str(tmp_path / "o.ipynb"), "--fresh")
    assert r.returncode == 0 and "resuming" not in r.stderr
    assert side_effects(tmp_path) == ["cell1", "cell2", "cell3", "cell1", "cell2", "cell3",
                                      "cell4", "cell5", "cell6"]


def test_other_parameters_are_another_run(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, body="raise RuntimeError('stop here')")
    assert fm_run(src, "-o", str(tmp_path / "o.ipynb"), "-p", "alpha", "5").returncode == 1
    make_notebook(src)
    r = fm_run(src, "-o", str(tmp_path / "o.ipynb"), "-p", "alpha", "6")
    assert r.returncode == 0 and "resuming" not in r.stderr
    bad = fm_run(src, "-p", "not a name", "1")
    assert bad.returncode == 1 and "is not a Python name" in bad.stderr
    missing = subprocess.run([FM, "run", str(tmp_path / "nope.ipynb")], capture_output=True,
                             text=True, env=env())
    assert missing.returncode == 2 and "no notebook at" in missing.stderr
