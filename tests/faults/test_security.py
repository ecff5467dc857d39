"""The trust boundary, tried as an attacker would: pickles from a history not
trusted here (a missing origin, an import without --trust), stored markup
re-published, hostile bundles, an import over a live history, kill -9 mid
export, file modes, a planted link at the endpoint file's temp path, and
read paths that must not write. Every payload is real: a pickle whose
``__reduce__`` writes a canary file, which appears once the history is
trusted (so a test that sees no canary could have seen one)."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_driver import Kernel, fm_cli, query, wait_until  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "fm_kernel"

EVIL = '''
class Evil:
    def __init__(self, path):
        self.path = path
    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))
'''


def check(k: Kernel, code: str) -> str:
    r = k.execute(code)
    assert r.status == "ok", (code, r.content.get("evalue"), r.text())
    return r.text()


def said(r) -> str:
    """Everything a cell showed: streams and its error line."""
    return r.text() + " " + str(r.content.get("evalue", ""))


def drop_origin(history: Path) -> None:
    """The attacker's edit: origin and trust gone from the database. A kill
    left the settings in the step log as well; it is replayed (and removed by
    a clean close) first, as the attacker would edit both."""
    from fm_kernel.record.store import Store

    Store.open(history).close()
    con = duckdb.connect(str(history))
    con.execute("DELETE FROM fm_meta WHERE key IN ('origin', 'trusted')")
    con.close()


def carried_away(tmp_path: Path, src: Path) -> Path:
    """The attack: a history whose origin was deleted, exported and imported without --trust."""
    drop_origin(src)
    bundle = tmp_path / "carried.fmb"
    r = fm_cli("export", str(src), "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "imported" / "h.duckdb"
    r = fm_cli("import", str(bundle), "--history", str(dst))
    assert r.returncode == 0 and "not trusted" in r.stdout, r.stderr
    return dst


# -- trust: one gate, every path ---------------------------------------------------------------


def test_nothing_unpickles_outside_the_one_gate() -> None:
    """Source check: the only unpickling calls are in record/trust.py, and every
    Snapshotter the package makes is given a history's gate."""
    calls = re.compile(r"\b(c?pickle|cloudpickle|dill|joblib)\.loads?\(|\)\.load\(\)|read_pickle\(|"
                       r"allow_pickle\s*=\s*True|\bUnpickler\([^)]*\)\.")
    offenders, snapshotters = [], []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if calls.search(line) and rel != "record/trust.py":
                offenders.append(f"{rel}:{n}: {line.strip()}")
            if "Snapshotter(" in line and not line.lstrip().startswith(("class ", "#")):
                snapshotters.append((rel, line))
    assert not offenders, "unpickling outside trust.unpickle:\n" + "\n".join(offenders)
    assert snapshotters and all("gate=" in line for _, line in snapshotters), snapshotters


def test_a_history_without_origin_is_untrusted_in_place_and_never_stamped(tmp_path: Path) -> None:
    history, canary = tmp_path / "h" / "h.duckdb", tmp_path / "canary"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, EVIL + f"e = Evil({str(canary)!r})\nkept = [1, 2]")
        k.kill9()
    drop_origin(history)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:  # unclean end: it would auto-resume
        r = k.execute("print('kept' in dir())")
        assert "False" in r.text() and "fm trust" in r.text(), r.text()
        assert not canary.exists()
    assert query(history, "SELECT value FROM fm_meta WHERE key = 'origin'") == []
    assert not canary.exists()


def test_every_unpickling_path_refuses_an_untrusted_import_until_trusted(tmp_path: Path) -> None:
    src, canary = tmp_path / "a" / "h.duckdb", tmp_path / "canary"
    with Kernel(env={"FM_HISTORY": str(src)}) as k:
        check(k, EVIL + f"e = Evil({str(canary)!r})\nimport pandas as pd\n"
                 "class EvilDataFrame(pd.DataFrame):\n    def __reduce__(self):\n"
                 f"        return Evil({str(canary)!r}).__reduce__()\n"
                 "df = EvilDataFrame({'a': [1, 2]})")
        check(k, "import threading\nlock = threading.Lock()")  # rebuilt by re-running its cell
        k.kill9()
    dst = carried_away(tmp_path, src)
    with Kernel(env={"FM_HISTORY": str(dst)}) as k:
        first = k.execute("1")  # auto-resume (the last kernel was killed) was refused
        assert "fm trust" in first.text() and not canary.exists(), first.text()
        paths = ["%fm resume", "%fm rewind 1", "%fm undo 1", "%fm checkout 2",
                 "import fm_kernel as fm\nfm.history().value('e', 1)",
                 "import fm_kernel as fm\nfm.history().state(1)['e']",
                 "%sql SELECT * FROM frame('df', 1)"]
        for code in paths:
            r = k.execute(code)
            assert r.status == "error" and "fm trust" in said(r), (code, said(r))
            assert said(r).count("\n") <= 2 and "Traceback" not in r.text(), (code, said(r))
            assert not canary.exists(), code
        assert k.execute("%sql SELECT count(*) FROM steps").status == "ok"  # SQL needs no trust
    assert fm_cli("trust", str(dst)).returncode == 0
    with Kernel(env={"FM_HISTORY": str(dst)}) as k:
        check(k, "%fm rewind 1")
    assert canary.read_text() == "ran"  # the payload was real


FLOW = '''
import fm_kernel.flows as fm

class EvilError(Exception):
    def __reduce__(self):
        return (exec, ("open({err!r}, 'w').write('ran')",))

@fm.step
def make():
    return Evil({res!r})

@fm.step
def boom():
    raise EvilError("no")

@fm.flow
def job():
    v = make()
    try:
        boom()
    except Exception:
        pass
    fm.wait_for("go", timeout=3600)
    return 1
'''


def test_journal_pickles_are_not_decoded_from_an_untrusted_history(tmp_path: Path) -> None:
    src = tmp_path / "a" / "h.duckdb"
    res, err = tmp_path / "canary-result", tmp_path / "canary-error"
    code = EVIL + FLOW.format(res=str(res), err=str(err))
    with Kernel(env={"FM_HISTORY": str(src)}) as k:
        check(k, code + "r = job.start()\nimport time\n"
                 "status = lambda: r.status() if callable(r.status) else r.status\n"
                 "while status() != 'waiting':\n    time.sleep(0.05)")
    # a clean end: the run stays pending ('waiting') in the history
    dst = carried_away(tmp_path, src)
    with Kernel(env={"FM_HISTORY": str(dst), "FM_RESUME": "never"}) as k:
        first = k.execute("1").text()  # the first cell carries the start-up notices
        assert "1 pending flow run(s) wait, not resumed" in first and "fm trust" in first, first
        r = k.execute(code)  # defining the flow would resume its run: replay decodes the journal
        time.sleep(2)
        assert r.status == "ok", said(r)
        assert not res.exists() and not err.exists()
    assert not res.exists() and not err.exists()
    # the run waits, untouched, instead of failing: nothing the user did not allow is lost
    assert query(dst, "SELECT status, error FROM runs")[0] == ("waiting", None)
    assert fm_cli("trust", str(dst)).returncode == 0
    with Kernel(env={"FM_HISTORY": str(dst), "FM_RESUME": "never"}) as k:
        k.execute(code)
        wait_until(lambda: res.exists() and err.exists(), what="the trusted replay")  # real payloads


def test_the_timeline_holds_back_stored_markup_of_an_untrusted_history(tmp_path: Path) -> None:
    history = tmp_path / "h" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "from IPython.display import HTML, display\n"
                 "display(HTML('<img src=x onerror=alert(1)>'))")
    drop_origin(history)
    show = ("from fm_kernel.widgets import timeline_widget\nw = timeline_widget()\nw.select(1)\n"
            "print(sorted({m for o in w.outputs.outputs for m in o.get('data', {})}))\n"
            "print(''.join(o.get('text', '') for o in w.outputs.outputs))")
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        out = check(k, show)
    mimes = next(ln for ln in out.splitlines() if ln.startswith("["))
    assert "text/html" not in mimes and "not shown" in out and "fm trust" in out, out
    assert fm_cli("trust", str(history)).returncode == 0
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        out = check(k, show)
    mimes = next(ln for ln in out.splitlines() if ln.startswith("["))
    assert "text/html" in mimes and "not shown" not in out, out


def test_stored_markup_and_scripts_are_shown_as_text_until_trusted(tmp_path: Path) -> None:
    history = tmp_path / "h" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "from IPython.display import HTML, Javascript, display\n"
                 "display(HTML('<b>bold</b><img src=x onerror=alert(1)>'))\n"
                 "display(Javascript('window.pwned = 1'))")
    drop_origin(history)

    def shown() -> tuple[set[str], str]:
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            r = k.execute("%fm show 1")
            assert r.status == "ok", said(r)
        kinds = {mime for m in r.outputs() if m["msg_type"] == "display_data"
                 for mime in m["content"]["data"]}
        return kinds, r.text()

    kinds, text = shown()
    assert not kinds & {"text/html", "application/javascript"}, kinds
    assert "not shown" in text and "fm trust" in text, text
    assert fm_cli("trust", str(history)).returncode == 0
    kinds, _ = shown()
    assert {"text/html", "application/javascript"} <= kinds


def test_the_kernels_own_history_is_trusted_when_the_machine_id_cannot_be_stored(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # XDG_DATA_HOME under a file: no id can be stored, even by root
    env = {"FM_HISTORY": str(tmp_path / "h" / "h.duckdb"), "XDG_DATA_HOME": str(blocker / "x")}
    with Kernel(env=env) as k:
        check(k, "xs = [1]")
        check(k, "xs.append(2)")
        r = k.execute("%fm rewind 1")
        assert r.status == "ok", said(r)
        check(k, "assert xs == [1], xs")


# -- bundles ----------------------------------------------------------------------------------


def _member(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in attrs.items():
        setattr(ti, k, v)
    if ti.type != tarfile.REGTYPE:
        ti.size = 0
    return ti, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return path


MANIFEST = _member("bundle.json", json.dumps({"format": 1}).encode())
ATTACKS = {
    "symlink": lambda out: [_member("history.duckdb.objects/ln", type=tarfile.SYMTYPE, linkname="../../.."),
                            _member("history.duckdb.objects/ln/escaped", b"x")],
    # links that each stay inside, chained to lead out (the shape of CVE-2025-4517)
    "symlink-chain": lambda out: [
        *[_member(f"history.duckdb.objects/{'d' * 200}{i}", type=tarfile.SYMTYPE,
                  linkname=f"{'d' * 200}{i + 1}" if i < 20 else ".") for i in range(21)],
        _member("history.duckdb.objects/l", type=tarfile.SYMTYPE,
                linkname=f"{'d' * 200}0/" + "../" * 40 + str(out.parent)[1:]),
        _member("history.duckdb.objects/l/" + out.name, b"written outside")],
    "hardlink": lambda out: [MANIFEST, _member("history.duckdb.objects/h", type=tarfile.LNKTYPE,
                                               linkname="bundle.json")],
    "absolute": lambda out: [_member(str(out), b"x")],
    "dotdot": lambda out: [_member("history.duckdb.objects/../../" + out.name, b"x")],
    "device": lambda out: [_member("history.duckdb.objects/dev", type=tarfile.CHRTYPE,
                                   devmajor=1, devminor=3)],
    "fifo": lambda out: [_member("history.duckdb.objects/fifo", type=tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_bundle_members_are_refused_in_one_line(tmp_path: Path, attack: str) -> None:
    outside = tmp_path / "outside-file"
    members = ATTACKS[attack](outside)
    bundle = _write_tar(tmp_path / f"{attack}.fmb",
                        members + [MANIFEST, _member("history.duckdb", b"not a database")])
    target = tmp_path / "t" / "h.duckdb"
    r = fm_cli("import", str(bundle), "--history", str(target))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "refused" in r.stderr and "bundle member" in r.stderr, r.stderr
    assert not outside.exists() and not target.exists()
    assert not any(p.name.startswith(".fm-import-") for p in target.parent.iterdir())


def test_a_size_bomb_is_refused_before_the_disk_fills(tmp_path: Path) -> None:
    """2 GiB of zeros in a 2 MB gzip bundle (gzip members concatenated, so
    the test makes it in a second)."""
    size = 2 << 30
    bundle = tmp_path / "bomb.tar.gz"
    header = tarfile.TarInfo("history.duckdb")
    header.size = size
    zeros = gzip.compress(bytes(16 << 20), 9)
    manifest = io.BytesIO()
    with tarfile.open(fileobj=manifest, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(MANIFEST[0], io.BytesIO(MANIFEST[1]))
    with open(bundle, "wb") as f:  # the manifest's tar without its end-of-archive blocks
        f.write(gzip.compress(manifest.getvalue()[:1024] + header.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(size // (16 << 20)):
            f.write(zeros)
        f.write(gzip.compress(bytes(1024)))
    assert bundle.stat().st_size < 8 << 20
    target = tmp_path / "t" / "h.duckdb"
    t0 = time.monotonic()
    r = fm_cli("import", str(bundle), "--history", str(target), env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 1 and "history.duckdb" in r.stderr and "FM_IMPORT_MAX_BYTES" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 30
    used = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert used < 16 << 20, used


def test_import_force_onto_a_live_kernels_history_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(other)}) as k:
        check(k, "theirs = 1")
    bundle = tmp_path / "b.fmb"
    assert fm_cli("export", str(other), "-o", str(bundle)).returncode == 0
    live = tmp_path / "live" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(live)}) as k:
        check(k, "mine = 1")
        r = fm_cli("import", str(bundle), "--history", str(live), "--force")
        assert r.returncode == 1 and str(k.pid) in r.stderr and "held by" in r.stderr, r.stderr
        check(k, "mine += 1")
    codes = [c for (c,) in query(live, "SELECT code FROM steps ORDER BY step")]
    assert codes == ["mine = 1", "mine += 1"]
    assert fm_cli("import", str(bundle), "--history", str(live), "--force").returncode == 0
    assert [c for (c,) in query(live, "SELECT code FROM steps")] == ["theirs = 1"]


def _readable_by_others(root: Path) -> list[str]:
    """Paths under ``root`` another user could read: a file with group/other
    bits, reached through folders all of which let them pass."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        if d != root and os.stat(d).st_mode & 0o011 == 0:
            dirs[:] = []  # nobody else gets in here
            continue
        found += [str(d / f) for f in files if os.lstat(d / f).st_mode & 0o044]
    return found


def _writing(outdir: Path) -> bool:
    """A bundle (partial, under whatever name) past 1 MB in ``outdir``."""
    for p in outdir.rglob("*"):
        try:
            if p.suffix in (".part", ".fmb") and p.stat().st_size > 1 << 20:
                return True
        except OSError:
            continue
    return False


def test_kill9_during_export_leaves_no_partial_bundle(tmp_path: Path) -> None:
    history = tmp_path / "h" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "import numpy as np\nbig = np.random.default_rng(0).random(25_000_000)")  # 200 MB
    outdir = tmp_path / "out"
    outdir.mkdir(mode=0o755)
    out = outdir / "b.fmb"
    fm = str(Path(sys.executable).parent / "fm")
    for _attempt in range(5):
        proc = subprocess.Popen([fm, "export", str(history), "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if _writing(outdir):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
        out.unlink()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    assert not out.exists()
    assert _readable_by_others(outdir) == []
    r = fm_cli("export", str(history), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["b.fmb"]  # the dead export's temp is gone
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# -- files: owner-only, no-follow -------------------------------------------------------------


def test_history_files_are_owner_only_with_umask_022(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        history = tmp_path / "hist" / "h.duckdb"
        with Kernel(env={"FM_HISTORY": str(history)}) as k:
            check(k, "import numpy as np\narr = np.arange(1_000_000)\n"
                     "import fm_kernel.flows as fm\n@fm.flow\ndef f():\n    return {1, 2}\n"
                     "assert f.start().result(30) == {1, 2}")
            check(k, f"%fm export {tmp_path / 'b.fmb'}")
            folder = history.parent
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # the WAL inside is out of reach
            names = {p.name for p in folder.iterdir()}
            assert {"h.duckdb", "h.duckdb.objects", "h.duckdb.endpoint.json"} <= names, names
            for p in folder.rglob("*"):
                mode = stat.S_IMODE(p.lstat().st_mode)
                if p.name != "h.duckdb.wal":
                    assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        assert stat.S_IMODE((tmp_path / "b.fmb").stat().st_mode) == 0o600
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        with Kernel(env={"FM_HISTORY": str(shared / "h.duckdb")}) as k:
            text = k.execute("1").text()
            assert "writable by other users" in text and text.count("flowmetal:") == 1, text
    finally:
        os.umask(old)


def test_a_link_planted_at_the_endpoint_files_temp_path_is_not_followed(tmp_path: Path) -> None:
    history = tmp_path / "h" / "h.duckdb"
    history.parent.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    os.symlink(precious, history.parent / "h.duckdb.endpoint.json.tmp")  # the old temp name
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "x = 1")
        ep = history.parent / "h.duckdb.endpoint.json"
        wait_until(ep.exists, what="the endpoint file")
        assert not ep.is_symlink() and "token" in json.loads(ep.read_text())
        assert stat.S_IMODE(ep.stat().st_mode) == 0o600
    assert precious.read_text() == "the user's own file"


def test_read_only_fm_sql_and_fm_log_create_no_files(tmp_path: Path) -> None:
    history = tmp_path / "h" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "x = 1")
    objects = Path(str(history) + ".objects")
    if objects.exists():
        import shutil

        shutil.rmtree(objects)
    before = sorted(p.name for p in history.parent.iterdir())
    data_home = tmp_path / "xdg"
    data_home.mkdir()
    env = {"XDG_DATA_HOME": str(data_home)}
    for args in (["sql", "SELECT count(*) FROM steps", "--history", str(history)],
                 ["log", "--history", str(history)]):
        r = fm_cli(*args, env=env)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in history.parent.iterdir()) == before
    assert list(data_home.rglob("*")) == []  # no machine id made for a read


def shared_history(tmp_path: Path) -> Path:
    """A history of one cell (``mine = 1``) in a folder every user may write:
    where another user can plant files beside it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    history = shared / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "mine = 1")
    return history


@pytest.mark.skipif(os.geteuid() != 0, reason="planting files as another user needs root")
def test_files_planted_by_another_user_are_not_used(tmp_path: Path) -> None:
    history = shared_history(tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    nobody = 65534
    log = Path(str(history) + ".flowlog")  # a record injected for the next kernel to replay
    log.write_text(json.dumps({"lsn": 10**6, "k": "run", "r": {
        "run_id": "injected", "flow": "evil", "status": "succeeded", "started_at": time.time()}}) + "\n")
    os.chown(log, nobody, nobody)
    inflight = Path(str(history) + ".inflight")
    os.symlink(precious, inflight)
    os.lchown(inflight, nobody, nobody)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("x = 1")
        assert r.status == "ok" and "not a file of yours" in r.text() and "records to" in r.text(), r.text()
        check(k, "x += 1")
    assert precious.read_text() == "the user's own file"
    assert query(history, "SELECT count(*) FROM fm_run_records")[0][0] == 0
    assert [c for (c,) in query(history, "SELECT code FROM steps")] == ["mine = 1"]


# How a side file is planted: by another user, or as a link of ours to a file of ours.
PLANTED = [
    pytest.param("owned by uid 65534", marks=pytest.mark.skipif(
        os.geteuid() != 0, reason="planting a file as another user needs root")),
    "a symbolic link",
]


def plant(side_file: Path, data: bytes, planted: str, tmp_path: Path) -> None:
    """``data`` at ``side_file``, written as ``planted`` says."""
    if planted == "a symbolic link":  # ours, to a file of ours: only the link is wrong
        target = tmp_path / ("elsewhere" + side_file.suffix)
        target.write_bytes(data)
        os.symlink(target, side_file)
    else:
        side_file.write_bytes(data)
        os.chown(side_file, 65534, 65534)


def injected_step_log() -> str:
    """What an attacker writes at ``<history>.steplog`` for the next open to
    replay: a cell, an event and a setting, in the log's own line format,
    with sequence numbers the history does not hold yet."""
    from fm_kernel.record.rows import StepRecord

    now = dt.datetime.now(dt.timezone.utc)
    cell = StepRecord(step=2, branch="main", parent=1, kernel_id="evil", cell_id=None,
                      execution_count=2, code="injected = 1", status="ok", started_at=now,
                      finished_at=now, duration_ms=1.0, outputs=[], state=None)
    lines = [{"seq": 10**6, "table": "steps", "rec": cell.to_json(), "entries": []},
             {"seq": 10**6 + 1, "table": "events",
              "row": [10**6 + 1, now.isoformat(), "injected", 2, None, "{}"]},
             {"seq": 0, "table": "meta", "row": [0, "injected", "yes"]}]
    return "".join(json.dumps(line) + "\n" for line in lines)


@pytest.mark.parametrize("planted", PLANTED)
def test_a_planted_step_log_is_never_replayed(tmp_path: Path, planted: str) -> None:
    history = shared_history(tmp_path)
    log = Path(str(history) + ".steplog")
    assert not log.exists()  # a clean close moved every record into DuckDB
    lines = injected_step_log()
    plant(log, lines.encode(), planted, tmp_path)
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        r = k.execute("x = 1")
        notices = [ln for ln in r.text().splitlines() if ln.startswith("flowmetal:")]
        assert r.status == "ok" and len(notices) == 1, r.text()
        assert f"h.duckdb.steplog is {planted}, not a file of yours" in notices[0], notices
        assert "records to" in notices[0], notices
    # every read path: a reader replays a dead kernel's step log first (as `fm sql` does)
    assert [c for (c,) in query(history, "SELECT code FROM steps")] == ["mine = 1"]
    assert query(history, "SELECT count(*) FROM fm_events WHERE kind = 'injected'") == [(0,)]
    assert query(history, "SELECT count(*) FROM fm_meta WHERE key = 'injected'") == [(0,)]
    r = fm_cli("log", "--history", str(history))
    assert r.returncode == 0 and "mine = 1" in r.stdout and "injected" not in r.stdout, r.stdout
    assert "not a file of yours" in r.stderr, r.stderr  # why its records were not read
    r = fm_cli("sql", "SELECT count(*) AS n FROM steps WHERE code LIKE 'injected%'",
               "--history", str(history))
    assert r.returncode == 0 and r.stdout.split()[-1] == "0", r.stdout
    assert log.is_symlink() == (planted == "a symbolic link") and log.read_text() == lines  # as found


def test_kill9_during_import_leaves_the_target_untouched(tmp_path: Path) -> None:
    history = tmp_path / "h" / "h.duckdb"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        check(k, "import numpy as np\nbig = np.random.default_rng(1).random(25_000_000)")  # 200 MB
    bundle = tmp_path / "b.fmb"
    assert fm_cli("export", str(history), "-o", str(bundle)).returncode == 0
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o755)
    target = dest / "h.duckdb"
    fm = str(Path(sys.executable).parent / "fm")

    def unpacking() -> bool:
        for p in dest.rglob("*"):
            try:
                if p.is_file() and p.stat().st_size > 1 << 20:
                    return True
            except OSError:
                continue
        return False

    for _attempt in range(5):
        proc = subprocess.Popen([fm, "import", str(bundle), "--history", str(target)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if unpacking():
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
        for p in dest.glob("h.duckdb*"):
            import shutil

            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    assert not any(p.name.startswith("h.duckdb") for p in dest.iterdir())
    assert _readable_by_others(dest) == []
    r = fm_cli("import", str(bundle), "--history", str(target), "--trust")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["h.duckdb", "h.duckdb.objects"]


def planted_wal(history: Path, tmp_path: Path) -> bytes:
    """A write-ahead log that DuckDB would replay onto ``history``: made by a
    process that opened a byte copy of it, wrote a cell and a setting, and
    died before a checkpoint."""
    twin = tmp_path / "twin.duckdb"
    twin.write_bytes(history.read_bytes())
    code = (f"import duckdb, os\ncon = duckdb.connect({str(twin)!r})\n"
            "con.execute(\"PRAGMA disable_checkpoint_on_shutdown\")\n"
            "con.execute(\"SET wal_autocheckpoint = '1GB'\")\n"
            "con.execute(\"UPDATE fm_step_records SET code = 'injected = 1'\")\n"
            "con.execute(\"INSERT INTO fm_meta VALUES ('injected', 'yes')\")\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    wal = Path(str(twin) + ".wal")
    assert wal.stat().st_size > 0
    return wal.read_bytes()


@pytest.mark.parametrize("planted", PLANTED)
def test_a_planted_write_ahead_log_is_never_read(tmp_path: Path, planted: str) -> None:
    history = shared_history(tmp_path)
    wal = Path(str(history) + ".wal")
    assert not wal.exists()  # a clean close checkpointed everything
    raw = planted_wal(history, tmp_path)
    plant(wal, raw, planted, tmp_path)
    line = f"h.duckdb.wal is {planted}, not a file of yours"
    r = fm_cli("sql", "SELECT code FROM steps", "--history", str(history))
    assert r.returncode == 0 and "mine = 1" in r.stdout and "injected" not in r.stdout, \
        r.stdout + r.stderr
    assert [ln for ln in r.stderr.splitlines() if line in ln and "without it" in ln], r.stderr
    r = fm_cli("log", "--history", str(history))
    assert r.returncode == 0 and "mine = 1" in r.stdout and "injected" not in r.stdout, r.stdout
    assert line in r.stderr, r.stderr
    from fm_kernel.record.store import peek_count

    assert peek_count(history, "SELECT count(*) FROM fm_meta WHERE key = 'injected'") == 0
    assert wal.is_symlink() == (planted == "a symbolic link") and wal.read_bytes() == raw  # as found
    if planted != "a symbolic link":
        assert wal.stat().st_uid == 65534
    assert not list(Path(tempfile.gettempdir()).glob("flowmetal-read-*")), "a private copy was left"


def test_a_reader_in_the_holding_process_never_copies_the_history(tmp_path: Path) -> None:
    """A POSIX lock goes when its process closes any descriptor of the file:
    copying the history to read it without a planted log, in the process
    that holds it, would hand the history to the next opener."""
    from fm_kernel import errors
    from fm_kernel.record.store import Store, peek_count

    history = tmp_path / "h.duckdb"
    store = Store.open(history)
    wal = Path(str(history) + ".wal")
    try:
        wal.unlink(missing_ok=True)
        os.symlink(tmp_path / "elsewhere.wal", wal)
        with pytest.raises(errors.HistoryLocked, match=f"process {os.getpid()}"):
            Store.open(history, read_only=True)
        with pytest.raises(errors.HistoryError):
            peek_count(history, "SELECT 1")
        seen = subprocess.run([sys.executable, "-c", "import sys; from fm_kernel.record.handover "
                               f"import holder; print(holder(sys.argv[1]))", str(history)],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        assert seen == str(os.getpid()), "the history's lock was dropped"
    finally:
        wal.unlink(missing_ok=True)
        store.abandon()
