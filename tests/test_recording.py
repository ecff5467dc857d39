"""Every cell a durable step: real kernels through jupyter_client, real
DuckDB files read after the kernel lets go of them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kernel_driver import Kernel, query

PNG_CELL = (
    "from IPython.display import Image, display\n"
    "import base64\n"
    "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==')\n"
    "display(Image(png))"
)


def steps(history: Path) -> list[tuple]:
    return query(history, "SELECT step, parent, status, code, error_name, execution_count,"
                          " cell_id FROM steps ORDER BY step")


def outputs(history: Path, step: int) -> list[tuple]:
    return query(history, "SELECT position, output_type, mime, content, meta FROM outputs"
                          " WHERE step = ? ORDER BY position, mime", [step])


def test_every_output_kind_is_recorded_as_sent(kernel: Kernel, history: Path) -> None:
    sent = kernel.execute("import sys\nprint('out'); print('err', file=sys.stderr); print('more')")
    kernel.execute("6 * 7")
    kernel.execute(PNG_CELL)
    kernel.execute("from IPython.display import HTML, clear_output\n"
                   "h = display(HTML('<b>a</b>'), display_id='d1')\n"
                   "h.update(HTML('<b>b</b>'))\nclear_output()\nprint('after clear')")
    kernel.shutdown()

    rows = steps(history)
    assert [r[2] for r in rows] == ["ok", "ok", "ok", "ok"]
    assert [r[1] for r in rows] == [None, 1, 2, 3]  # each step starts from the one before

    # streams are recorded as the frontend received them (ipykernel batches
    # writes), with consecutive chunks of one stream merged as nbformat does
    wire = []
    for m in sent.outputs():
        name, text = m["content"]["name"], m["content"]["text"]
        if wire and wire[-1][0] == name:
            wire[-1] = (name, wire[-1][1] + text)
        else:
            wire.append((name, text))
    s1 = outputs(history, 1)
    assert [(json.loads(r[4])["name"], r[3]) for r in s1] == wire
    assert "".join(r[3] for r in s1 if json.loads(r[4])["name"] == "stdout") == "out\nmore\n"
    (res,) = outputs(history, 2)
    assert res[1:4] == ("execute_result", "text/plain", "42")
    png = [r for r in outputs(history, 3) if r[2] == "image/png"]
    assert png and png[0][1] == "display_data" and png[0][3].startswith("iVBOR")
    s4 = outputs(history, 4)
    kinds = [r[1] for r in s4 if r[2] in (None, "text/html", "text/plain")]
    assert kinds[:2] == ["display_data", "update_display_data"] or "update_display_data" in kinds
    assert [r[1] for r in s4][-2:] == ["clear_output", "stream"]
    assert json.loads([r for r in s4 if r[1] == "update_display_data"][0][4])["display_id"] == "d1"


def test_error_is_recorded_with_traceback(kernel: Kernel, history: Path) -> None:
    reply = kernel.execute("def f():\n    raise ValueError('bad value 7')\nf()")
    assert reply.status == "error"
    kernel.shutdown()
    (row,) = query(history, "SELECT status, error_name, error_value, traceback FROM steps")
    assert row[:3] == ("error", "ValueError", "bad value 7")
    assert any("bad value 7" in line for line in row[3])
    assert outputs(history, 1)[0][1] == "error"


def test_history_queries_and_silent_executions_are_not_steps(kernel: Kernel, history: Path) -> None:
    kernel.execute("a = 1")
    kernel.execute("b = 2", silent=True)
    kernel.execute("c = 3", store_history=False)  # nbval sends cells this way: a step
    log = kernel.execute("%fm log")
    assert log.status == "ok" and "a = 1" in log.text()
    kernel.execute("%fm status")
    kernel.shutdown()
    assert [r[3] for r in steps(history)] == ["a = 1", "c = 3"]


def test_cell_id_from_request_metadata_is_kept(kernel: Kernel, history: Path) -> None:
    msg = kernel.kc.session.msg("execute_request", {
        "code": "x = 1", "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True}, metadata={"cellId": "cell-abc"})
    kernel.kc.shell_channel.send(msg)
    kernel.collect(msg["header"]["msg_id"])
    kernel.execute("y = 2")  # nbclient sends no cellId
    kernel.shutdown()
    assert [(r[6], r[5]) for r in steps(history)] == [("cell-abc", 1), (None, 2)]


def test_a_finished_cell_is_durable_when_its_reply_arrives(kernel: Kernel, history: Path) -> None:
    kernel.execute("first = 1")
    reply = kernel.execute("second = 2\nprint('done')")
    assert reply.status == "ok"
    kernel.kill9()  # no chance to write anything after the reply
    assert [(r[2], r[3]) for r in steps(history)] == [("ok", "first = 1"), ("ok", "second = 2\nprint('done')")]


def test_interrupt_marks_the_step_interrupted_and_the_kernel_lives(kernel: Kernel, history: Path) -> None:
    msg_id = kernel.kc.execute("import time\nprint('start', flush=True)\ntime.sleep(60)")
    time.sleep(1.5)
    kernel.km.interrupt_kernel()
    reply = kernel.collect(msg_id, timeout=30)
    assert reply.status == "error" and reply.content["ename"] == "KeyboardInterrupt"
    assert kernel.execute("1 + 1").status == "ok"
    kernel.shutdown()
    assert [r[2] for r in steps(history)] == ["interrupted", "ok"]
    assert outputs(history, 1)[0][3] == "start\n"


def test_kill_mid_cell_is_marked_interrupted_by_the_next_kernel(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.execute("done = True")
        k.kc.execute("import time\ntime.sleep(60)")
        time.sleep(0.3)  # before the 1 s 'running' row: only the marker knows
        k.kill9()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        log = k.execute("%fm log")
        assert "interrupted" in log.text()
        k.execute("after = 1")
    rows = steps(history)
    assert [(r[0], r[2]) for r in rows] == [(1, "ok"), (2, "interrupted"), (3, "ok")]
    assert rows[1][3] == "import time\ntime.sleep(60)"


def test_kill_during_a_long_cell_after_its_running_row(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.kc.execute("import time\ntime.sleep(60)")
        time.sleep(2.5)
        k.kill9()
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        k.execute("x = 1")
    assert [(r[0], r[2]) for r in steps(history)] == [(1, "interrupted"), (2, "ok")]


def test_second_kernel_on_a_locked_history_records_elsewhere_and_says_so_once(history: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(history)}) as first:
        first.execute("owner = 1")
        with Kernel(env={"FM_HISTORY": str(history)}) as second:
            r1 = second.execute("guest = 1")
            r2 = second.execute("guest += 1")
            assert r1.status == r2.status == "ok"
            notice = [m["content"]["text"] for m in r1.iopub
                      if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
            assert len(notice) == 1 and "in use by" in notice[0] and "records to" in notice[0]
            assert "in use" not in r2.text()
            alt = Path(notice[0].rsplit("records to ", 1)[1].strip())
    assert [r[3] for r in steps(history)] == ["owner = 1"]
    assert [r[3] for r in steps(alt)] == ["guest = 1", "guest += 1"]


def test_unwritable_history_is_reported_once_and_cells_still_run(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the history folder should be")
    # root ignores permission bits, so make the folder impossible instead
    with Kernel(env={"FM_HISTORY": str(blocker / "h.duckdb")}) as k:
        r1 = k.execute("x = 40")
        r2 = k.execute("x + 2")
        assert r1.status == r2.status == "ok"
        assert "cannot write" in r1.text() and "records to" in r1.text()
        assert "cannot write" not in r2.text()
        assert r2.content["execution_count"] == 2
        status = k.execute("%fm status").text()
        assert str(blocker) not in status.split("history", 1)[1].splitlines()[0]


def test_history_beside_the_notebook_from_jpy_session_name(tmp_path: Path) -> None:
    nb_dir = tmp_path / "project"
    nb_dir.mkdir()
    with Kernel(env={"JPY_SESSION_NAME": "project/analysis.ipynb"}, cwd=nb_dir) as k:
        k.execute("v = 1")
    expected = nb_dir / ".flowmetal" / "analysis.ipynb.duckdb"
    assert [r[3] for r in steps(expected)] == ["v = 1"]
    assert oct(expected.stat().st_mode & 0o777) == "0o600"


def test_without_a_notebook_the_history_is_the_sessions_own_in_the_working_directory(
        tmp_path: Path) -> None:
    # no notebook can be known: one history per kernel session, never a shared one
    with Kernel(cwd=tmp_path) as k:
        k.execute("w = 1")
    found = list((tmp_path / ".flowmetal").glob("session-*.duckdb"))
    assert len(found) == 1 and [r[3] for r in steps(found[0])] == ["w = 1"]


def test_step_numbers_continue_across_kernels_and_are_never_reused(history: Path) -> None:
    for code in ("a = 1", "b = 2"):
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            k.execute(code)
            k.execute(code + " + 0")
    rows = steps(history)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    # a fresh kernel starts from an empty namespace, but on HEAD: its first
    # step's parent is the step HEAD was on (docs/time-travel.md)
    assert [r[1] for r in rows] == [None, 1, 2, 3]
    kinds = [r[0] for r in query(history, "SELECT kind FROM events ORDER BY seq")]
    assert kinds.count("kernel_started") == 2 and kinds.count("kernel_stopped") == 2


def test_fm_show_and_bad_magic_arguments(kernel: Kernel) -> None:
    kernel.execute("print('hello from step 1')")
    shown = kernel.execute("%fm show 1")
    assert "hello from step 1" in shown.text() and "ok" in shown.text()
    for bad, words in (("%fm show 99", "no step 99"), ("%fm show x", "invalid int"),
                       ("%fm frobnicate", "unknown command"), ("%fm log -n 0", "at least 1")):
        r = kernel.execute(bad)
        assert r.status == "error", bad
        errs = [m for m in r.iopub if m["msg_type"] == "error"]
        text = r.text() + "".join("".join(m["content"]["traceback"]) for m in errs)
        assert words in text, (bad, text)
        assert "Traceback" not in text
    assert kernel.execute("1 + 1").status == "ok"


@pytest.mark.parametrize("env_name", ["FM_HISTORY"])
def test_history_file_and_wal_are_owner_only(tmp_path: Path, env_name: str) -> None:
    path = tmp_path / "h" / "x.duckdb"
    with Kernel(env={env_name: str(path)}) as k:
        k.execute("z = 1")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert not os.path.exists(str(path) + ".inflight")  # clean shutdown leaves no marker


def test_fm_install_writes_a_kernelspec_that_starts_this_kernel(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    fm = str(Path(sys.executable).parent / "fm")
    r = subprocess.run([fm, "install", "--prefix", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    spec = tmp_path / "share" / "jupyter" / "kernels" / "flowmetal" / "kernel.json"
    data = json.loads(spec.read_text())
    assert data["display_name"] == "Flowmetal (Python 3)"
    assert Path(data["argv"][0]).parent == Path(sys.executable).parent  # this environment
    assert data["argv"][1:3] == ["-m", "fm_kernel"]
    assert (spec.parent / "logo-64x64.png").exists()
    bad = subprocess.run([fm, "install", "--user", "--prefix", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not allowed with argument" in bad.stderr
