"""`fm run` as robust as papermill, with real processes: a killed kernel is
reported in seconds and the rerun resumes; the input notebook is never
overwritten; execution counts run on across a resume; a failed run is named
as one; cells after a failure lose their stale outputs; the output says it is
a flowmetal notebook; a held history names its holder and `--history`. And
`fm signal` takes a run id by unique prefix, with CLI wording."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from kernel_driver import Kernel, wait_until

FM = str(Path(sys.executable).parent / "fm")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FM_", "JPY_"))}


def cell(i: int, extra: str = "") -> str:
    return f"with open('marks.txt', 'a') as f:\n    f.write('cell{i}\\n')\nv{i} = {i}\nprint(v{i}){extra}"


def make_notebook(path: Path, n: int = 4, slow: int | None = None, broken: int | None = None,
                  stale: bool = False) -> None:
    nb = nbformat.v4.new_notebook()
    # as a notebook saved from another kernel would say
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = []
    for i in range(1, n + 1):
        extra = "\nimport time\ntime.sleep(120)" if i == slow else ""
        extra += f"\nraise ValueError('cell {i} is broken')" if i == broken else ""
        c = nbformat.v4.new_code_cell(cell(i, extra))
        if stale:
            c.execution_count = 90 + i
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"stale {i}\n")]
        cells.append(c)
    nb.cells = cells
    nbformat.write(nb, path)


def fm(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FM, *args], capture_output=True, text=True, env=env(), cwd=cwd,
                          timeout=timeout)


def marks(folder: Path) -> list[str]:
    return (folder / "marks.txt").read_text().split()


def counts(path: Path) -> list[int | None]:
    return [c.execution_count for c in nbformat.read(path, as_version=4).cells]


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_killed_kernel_is_reported_within_seconds_and_the_rerun_resumes(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, slow=3)
    out = tmp_path / "out.ipynb"
    proc = subprocess.Popen([FM, "run", str(src), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=tmp_path)
    try:
        wait_until(lambda: (tmp_path / "marks.txt").exists() and "cell3" in marks(tmp_path),
                   timeout=90, what="the slow cell to start")
        kernels = children(proc.pid)
        assert len(kernels) == 1, kernels
        os.kill(kernels[0], signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=10)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode not in (0, None), err
    assert took < 10, took
    assert "kernel died" in err and "resume" in err, err
    assert "cell 3 of 4" in err, err

    make_notebook(src)  # the slow cell is fixed
    r = fm("run", str(src), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming after cell 2 of 4 from an interrupted run" in r.stderr, r.stderr
    assert marks(tmp_path) == ["cell1", "cell2", "cell3", "cell3", "cell4"]
    assert counts(out) == [1, 2, 3, 4]


def test_ctrl_c_stops_the_cell_and_the_run_then_resumes(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, slow=3)
    proc = subprocess.Popen([FM, "run", str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), cwd=tmp_path)
    try:
        wait_until(lambda: (tmp_path / "marks.txt").exists() and "cell3" in marks(tmp_path),
                   timeout=90, what="the slow cell to start")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode == 130, err
    assert "interrupted during cell 3 of 4" in err and "resume after cell 2" in err, err
    assert children(proc.pid) == []
    make_notebook(src)
    r = fm("run", str(src), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming after cell 2 of 4 from an interrupted run" in r.stderr, r.stderr
    assert counts(tmp_path / "job.out.ipynb") == [1, 2, 3, 4]


def test_without_o_the_input_is_kept_and_the_output_says_flowmetal(tmp_path: Path) -> None:
    src = tmp_path / "report.ipynb"
    make_notebook(src, n=2)
    before = src.read_bytes()
    r = fm("run", str(src), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert src.read_bytes() == before
    out = tmp_path / "report.out.ipynb"
    assert str(out) in r.stderr
    nb = nbformat.read(out, as_version=4)
    assert [c.outputs[0]["text"] for c in nb.cells] == ["1\n", "2\n"]
    spec = nb.metadata["kernelspec"]
    assert spec["name"] == "flowmetal" and spec["language"] == "python"
    assert spec["display_name"].startswith("Flowmetal")
    assert nb.metadata["language_info"]["name"] == "python"
    assert "NAME.out.ipynb" in " ".join(fm("run", "--help", cwd=tmp_path).stdout.split())


def test_a_failed_run_resumes_named_as_failed_with_counts_running_on(tmp_path: Path) -> None:
    src = tmp_path / "job.ipynb"
    make_notebook(src, n=5, broken=3, stale=True)
    out = tmp_path / "out.ipynb"
    r = fm("run", str(src), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 1
    nb = nbformat.read(out, as_version=4)
    assert nb.cells[2].outputs[-1]["output_type"] == "error"
    # cells after the failure keep nothing of the input's outputs or counts
    assert [(c.outputs, c.execution_count) for c in nb.cells[3:]] == [([], None), ([], None)]
    assert counts(out)[:3] == [1, 2, 3]

    make_notebook(src, n=5, stale=True)  # fixed
    r = fm("run", str(src), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "from a failed run" in r.stderr and "interrupted" not in r.stderr, r.stderr
    assert "cell 3 (" in r.stderr and "raised ValueError: cell 3 is broken" in r.stderr, r.stderr
    assert counts(out) == [1, 2, 3, 4, 5]
    assert marks(tmp_path) == ["cell1", "cell2", "cell3", "cell3", "cell4", "cell5"]
    assert "stale" not in out.read_text()


def test_a_held_history_names_its_holder_and_the_history_option(tmp_path: Path) -> None:
    src = tmp_path / "held.ipynb"
    make_notebook(src, n=1)
    with Kernel(env={"FM_NOTEBOOK": str(src)}, cwd=tmp_path) as k:
        assert k.execute("x = 1").status == "ok"
        started = time.monotonic()
        r = fm("run", str(src), cwd=tmp_path)
        took = time.monotonic() - started
        assert r.returncode == 1
        assert str(k.pid) in r.stderr and "--history" in r.stderr, r.stderr
        assert "FM_HISTORY" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert took < 8, took  # a live kernel that is not a run's is not waited for
        other = fm("run", str(src), "--history", str(tmp_path / "other.duckdb"), cwd=tmp_path)
        assert other.returncode == 0, other.stderr


FLOW = '''
import fm_kernel as fm

@fm.flow
def approval(n):
    return fm.wait_for("approve", timeout=600)

ids = [approval.start(i).id for i in range(20)]
print(" ".join(ids))
'''


def test_signal_takes_a_unique_run_id_prefix(tmp_path: Path) -> None:
    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute(FLOW)
        assert r.status == "ok", r.content
        ids = r.text().split()
        live = fm("signal", ids[0][:8], "approve", "--history", str(history), cwd=tmp_path)
        assert live.returncode == 0, live.stderr
        assert ids[0] in live.stdout
    first = [i[0] for i in ids]
    shared = next(c for c in first if first.count(c) > 1)
    unique = next(i for i in ids[1:] if sum(j.startswith(i[:8]) for j in ids) == 1)
    offline = fm("signal", unique[:8], "approve", "--history", str(history), cwd=tmp_path)
    assert offline.returncode == 0 and unique in offline.stdout, offline.stderr
    many = fm("signal", shared, "approve", "--history", str(history), cwd=tmp_path)
    assert many.returncode == 1 and many.stderr.count("\n") == 1, many.stderr
    assert "matches" in many.stderr and "`fm runs`" in many.stderr, many.stderr
    none = fm("signal", "zz", "approve", "--history", str(history), cwd=tmp_path)
    assert none.returncode == 1 and none.stderr.count("\n") == 1, none.stderr
    assert "no flow run 'zz'" in none.stderr and "`fm runs`" in none.stderr, none.stderr
    assert "fm.runs()" not in many.stderr + none.stderr


def test_the_kernel_s_answers_reach_the_shell_in_cli_words(tmp_path: Path) -> None:
    from fm_kernel.cli import remote
    from fm_kernel.errors import UsageError

    history = tmp_path / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute("import fm_kernel").status == "ok"
        info = remote.live_endpoint(history)
        assert info is not None
        try:
            remote.call(info, "POST", "/runs/nope/signals/go", None)
        except UsageError as exc:
            said = str(exc)
        else:
            raise AssertionError("an unknown run was accepted")
    assert "no flow run 'nope'" in said and "`fm runs`" in said and "fm.runs()" not in said, said
