"""Time travel: what capturing the namespace after every cell costs, what it
stores, and how fast `%fm rewind` is, measured against the stock `python3`
kernel and against Kishu 0.3.4 (https://github.com/illinoisdata/kishu), a
Jupyter extension that checkpoints the namespace incrementally after each cell.

    .venv/bin/python bench/time_travel.py            # full run, 1-3 minutes on 2 cores, ~5 GB RAM, ~3 GB temp disk
    .venv/bin/python bench/time_travel.py --quick    # N=100,000, 100 MB arrays, < 1 minute
    .venv/bin/python bench/time_travel.py --setup-kishu   # create the Kishu venv first (pip)
    .venv/bin/python bench/time_travel.py --json raw.json  # also keep every sample

Every kernel is started through jupyter_client like a frontend starts it, and
one kernel runs at a time (the 1 GB workloads would otherwise hold 2 GB+ in
two kernels). A cell's latency is the client's view: from sending
execute_request until both the execute_reply and the idle status for it have
arrived. "Added time" of a cell = median over rounds of the kernel's latency
minus the median over rounds of the baseline kernel's latency for that cell.

Workloads:
  W1  ten cells on N = 1,000,000 rows (numpy + pandas), after an unmeasured
      import cell: flowmetal (object fsync on, and off), stock python3, Kishu,
      and a stock ipykernel from Kishu's venv (Kishu's own baseline).
      Stored bytes: flowmetal = history .duckdb (+ .wal) + `<history>.objects/`;
      Kishu = `<notebook>.kishudb` (+ journal files) + `$KISHU_PATH_ROOT/.kishu`.
      Rewind/checkout: HEAD after cell 10 -> state after cell 6 -> after cell 10 ...
  W2  a 1 GB float64 array made in an unmeasured cell and never touched again,
      then ten small cells; then `%fm rewind` between the states after small
      cells 5 and 10 (only small names differ).
  W3  a 1 GB array, then ten cells each adding 1 to a different 1% slice;
      stored bytes; then `%fm rewind` between the states after cells 5 and 10
      (the 1 GB array differs, so it is reloaded whole).

Kishu runs in its own venv (default /tmp/kishu-venv; `--setup-kishu` makes it
with the same numpy/pandas/ipykernel versions as this venv). It is attached
with `init_kishu(<notebook>)` on an empty notebook file, with
ENV_KISHU_TEST_MODE=1: that only switches off Kishu's notebook-save round trips
to the browser (which would wait ~1 s per save with no frontend) and makes
commit ids counters; checkpointing is unchanged. Its checkout is timed as the
`kishu checkout` CLI does it: a silent execute of
`_kishu.checkout('<commit>', skip_notebook=False)` in the kernel.

Exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

DEFAULT_KISHU_PY = "/tmp/kishu-venv/bin/python"
KISHU_VERSION = "0.3.4"

# Targets
T_ADDED_W1_MS = 30.0
T_RATIO_KISHU_TIME = 1 / 10
T_RATIO_KISHU_BYTES = 1 / 3
T_ADDED_W2_MS = 20.0
T_W3_STORED_FACTOR = 1.3  # x the array's size
T_REWIND_SMALL_MS = 10.0  # issue 14 (was 50)
T_REWIND_BIG_S = 1.5
T_RATIO_KISHU_CHECKOUT = 1 / 5


def w1_cells() -> list[str]:
    return [
        "a = np.random.default_rng(0).integers(0, 100, N)",
        "b = np.random.default_rng(1).random(N)",
        "a *= 2",
        "df = pd.DataFrame({'a': a, 'b': b, 'k': np.arange(N) % 7})",
        "df['c'] = df.a * df.b",
        "means = df.groupby('k').c.mean()",
        "b[:10] = 0",
        "df.loc[df.k == 3, 'a'] = 0",
        "summary = (len(df), float(df.c.sum()), means.max())",
        "x = 1",
    ]


W2_CELLS = [
    "s = 1", "lst.append(2)", "t = s + 1", "d = {'k': 4}", "d['k'] += 1",
    "msg = f'step {t}'", "lst.append(len(lst))", "s = 8", "u = [s, t]", "x = 10",
]


def w3_cells(m: int) -> list[str]:
    one = m // 100
    return [f"big[{k * m // 10}:{k * m // 10 + one}] += 1.0" for k in range(10)]


# Installed (silently, so it is no step) in flowmetal kernels: stage timings of
# each recorded cell, kept on the kernel object, never in the user namespace.
FM_PROBE = r"""
def _fm_bench_probe(fsync):
    import time
    k = get_ipython().kernel
    tl = k.fm.states
    snap, objs, rec = tl.snap, tl.snap.objects, k.recorder
    objs.fsync = fsync
    cur = {}
    k._fm_bench = cur
    def timed(obj, name, key):
        orig = getattr(obj, name)
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                cur[key] = cur.get(key, 0.0) + time.perf_counter() - t
        setattr(obj, name, wrapper)
    orig_begin = rec.begin
    def begin(*a, **kw):
        cur.clear()
        t = time.perf_counter()
        r = orig_begin(*a, **kw)
        cur["begin"] = time.perf_counter() - t
        return r
    rec.begin = begin
    orig_capture = tl.capture
    def capture(code):
        t = time.perf_counter()
        r = orig_capture(code)
        cur["capture"] = time.perf_counter() - t
        c = r[2]
        cur["hashed"] = c.bytes_hashed
        cur["written"] = c.bytes_written
        cur["candidates"] = len(c.candidates)
        cur["full_scan"] = c.full_scan_reason
        return r
    tl.capture = capture
    timed(rec, "finish", "finish")
    timed(snap, "_pickle", "pickle_hash")
    # the capture's waits for its chunk writes (started on a pool while it
    # hashes, objects.stage_chunks) and its one sync
    timed(objs, "put_chunks", "write")
    timed(objs, "sync", "write")
    timed(tl, "committed", "committed")
_fm_bench_probe({fsync})
del _fm_bench_probe
"""
FM_PROBE_READ = "__import__('json').dumps(get_ipython().kernel._fm_bench)"
FM_HEAD = "str(get_ipython().kernel.fm.head)"
KISHU_HEAD = "str(_kishu._kishu_branch.get_head().commit_id)"


# --------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------
class Driver:
    """One live kernel and a blocking client on it."""

    def __init__(self, label: str, kernel_name: str, env: dict[str, str], cwd: Path,
                 ksm: KernelSpecManager | None = None):
        self.label = label
        conn = cwd / f"kernel-{uuid.uuid4()}.json"  # Kishu derives its kernel id from this name
        kw: dict[str, Any] = {"kernel_name": kernel_name, "connection_file": str(conn)}
        if ksm is not None:
            kw["kernel_spec_manager"] = ksm
        self.km = KernelManager(**kw)
        self.km.start_kernel(env=env, cwd=str(cwd), stderr=subprocess.DEVNULL)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=90)
        self.notices: list[str] = []  # the kernel's own "flowmetal: ..." lines on stderr

    def run(self, code: str, *, silent: bool = False, timeout: float = 600,
            expr: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
        """(seconds until reply and idle, user_expressions results as text)."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code, silent=silent, user_expressions=expr or {})
        got_reply = got_idle = False
        reply: dict[str, Any] = {}
        while not (got_reply and got_idle):
            if not got_reply:
                msg = self.kc.get_shell_msg(timeout=timeout)
                if msg["parent_header"].get("msg_id") == msg_id:
                    got_reply, reply = True, msg["content"]
            else:
                msg = self.kc.get_iopub_msg(timeout=timeout)
                if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    got_idle = True
                elif msg["msg_type"] == "stream" and msg["content"].get("name") == "stderr":
                    self.notices += [f"{code[:40]!r}: {ln}" for ln in msg["content"]["text"].splitlines()
                                     if ln.startswith("flowmetal")]
        elapsed = time.perf_counter() - t0
        if reply.get("status") != "ok":
            tb = "\n".join(reply.get("traceback", [])) or reply
            raise RuntimeError(f"[{self.label}] cell failed: {code[:80]!r}\n{tb}")
        out = {}
        for k, v in (reply.get("user_expressions") or {}).items():
            if v.get("status") != "ok":
                raise RuntimeError(f"[{self.label}] expression {k} failed: {v}")
            out[k] = v["data"]["text/plain"]
        return elapsed, out

    def ask(self, **expr: str) -> dict[str, str]:
        out = self.run("", silent=True, expr=expr)[1]
        return {k: (ast.literal_eval(v) if v[:1] in "'\"" else v) for k, v in out.items()}

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=False)
        except Exception:
            self.km.shutdown_kernel(now=True)


def tree_bytes(*paths: Path) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            for dp, _d, files in os.walk(p):
                total += sum(os.path.getsize(os.path.join(dp, f)) for f in files)
    return total


def fm_stored(history: Path) -> int:
    side = [p for p in history.parent.glob(history.name + "*") if p.is_file()]  # .duckdb, .wal
    return tree_bytes(*side, Path(str(history) + ".objects"))


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("FM_HISTORY", "FM_NOTEBOOK", "JPY_SESSION_NAME", "FM_RESUME")}


@dataclass
class Session:
    """What one kernel did on one workload."""
    flavor: str
    cells: list[float] = field(default_factory=list)           # seconds per measured cell
    probes: list[dict[str, Any]] = field(default_factory=list)  # flowmetal stage timings per cell
    heads: list[str] = field(default_factory=list)             # step / commit after each cell
    setup_s: list[float] = field(default_factory=list)
    setup_probes: list[dict[str, Any]] = field(default_factory=list)
    stored: int | None = None
    rewinds: dict[str, list[float]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="fm-tt-bench-"))
        self.kishu_py = args.kishu_python
        self.kishu_error: str | None = None
        self.kishu_ksm: KernelSpecManager | None = None

    # -- kernel factories ----------------------------------------------------
    def start(self, flavor: str, workdir: Path) -> tuple[Driver, dict[str, Path]]:
        workdir.mkdir(parents=True, exist_ok=True)
        env = base_env()
        where: dict[str, Path] = {}
        if flavor.startswith("fm"):
            history = workdir / "history.duckdb"
            env.update(FM_HISTORY=str(history), FM_RESUME="never")
            where["history"] = history
            return Driver(flavor, "flowmetal", env, workdir), where
        if flavor == "py":
            return Driver(flavor, "python3", env, workdir), where
        # kishu / kishu-base: ipykernel from Kishu's venv
        if self.kishu_ksm is None:
            kdir = self.tmp / "kernels" / "kishu-bench"
            kdir.mkdir(parents=True, exist_ok=True)
            (kdir / "kernel.json").write_text(json.dumps({
                "argv": [self.kishu_py, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "kishu bench", "language": "python"}))
            self.kishu_ksm = KernelSpecManager(kernel_dirs=[str(self.tmp / "kernels")])
        env.update(KISHU_PATH_ROOT=str(workdir / "kishu-root"), ENV_KISHU_TEST_MODE="1")
        (workdir / "kishu-root").mkdir(exist_ok=True)
        nb = workdir / "bench.ipynb"
        nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        where["notebook"], where["root"] = nb, workdir / "kishu-root"
        return Driver(flavor, "kishu-bench", env, workdir, self.kishu_ksm), where

    def setup(self, d: Driver, flavor: str, where: dict[str, Path], code: list[str],
              s: Session) -> None:
        if flavor == "kishu":
            s.setup_s.append(d.run(f"from kishu import init_kishu; init_kishu({str(where['notebook'])!r})")[0])
        if flavor.startswith("fm"):
            d.run(FM_PROBE.replace("{fsync}", str(flavor != "fm-nofsync")), silent=True)
        for c in code:
            s.setup_s.append(d.run(c)[0])
            if flavor.startswith("fm"):
                s.setup_probes.append(json.loads(d.ask(p=FM_PROBE_READ)["p"]))

    def cells(self, d: Driver, flavor: str, cells: list[str], s: Session) -> None:
        for c in cells:
            s.cells.append(d.run(c)[0])
            if flavor.startswith("fm"):
                got = d.ask(p=FM_PROBE_READ, h=FM_HEAD)
                s.probes.append(json.loads(got["p"]))
                s.heads.append(got["h"])
                if got["h"] == "None" or (len(s.heads) > 1 and s.heads[-1] == s.heads[-2]):
                    raise RuntimeError(f"[{flavor}] cell {c!r} was not recorded as a step (HEAD {got['h']}); "
                                       f"kernel said: {d.notices or 'nothing on stderr'}")
            elif flavor == "kishu":
                s.heads.append(d.ask(h=KISHU_HEAD)["h"])

    def move(self, d: Driver, flavor: str, to: str) -> float:
        if flavor.startswith("fm"):
            return d.run(f"%fm rewind {to}")[0]
        return d.run(f"_kishu.checkout({to!r}, skip_notebook=False)", silent=True)[0]

    def rewinds(self, d: Driver, flavor: str, s: Session, a: int, b: int, reps: int,
                check: Callable[[Driver, int], str | None]) -> None:
        """From HEAD (after cell b), alternately to the state after cell a and back."""
        s.rewinds = {f"to{a}": [], f"to{b}": []}
        for _ in range(reps):
            for i in (a, b):
                s.rewinds[f"to{i}"].append(self.move(d, flavor, s.heads[i - 1]))
                bad = check(d, i)
                if bad:
                    s.checks.append(f"after moving to cell {i}: {bad}")

    # -- workloads -------------------------------------------------------------
    def w1_session(self, flavor: str, rnd: int) -> Session:
        n = self.args.n
        s = Session(flavor)
        wd = self.tmp / f"w1-{flavor}-{rnd}"
        d, where = self.start(flavor, wd)
        try:
            self.setup(d, flavor, where, [f"import numpy as np\nimport pandas as pd\nN = {n}"], s)
            self.cells(d, flavor, w1_cells(), s)
            if flavor in ("fm", "fm-nofsync", "kishu"):
                def check(dr: Driver, i: int) -> str | None:
                    got = dr.ask(v="str(('summary' in globals(), int(b[0] == 0), int(df.a.iloc[3] == 0)))")["v"]
                    want = str((i >= 9, int(i >= 7), int(i >= 8)))
                    return None if got == want else f"namespace is {got}, expected {want}"
                self.rewinds(d, flavor, s, 6, 10, self.args.reps_w1, check)
        finally:
            d.shutdown()
        if flavor.startswith("fm"):
            s.stored = fm_stored(where["history"])
        elif flavor == "kishu":
            nb = where["notebook"]
            s.stored = tree_bytes(*nb.parent.glob(nb.stem + ".kishudb*"), where["root"] / ".kishu")
        shutil.rmtree(wd, ignore_errors=True)
        return s

    def big_session(self, wl: str, flavor: str, rnd: int) -> Session:
        m = self.args.m
        s = Session(flavor)
        wd = self.tmp / f"{wl}-{flavor}-{rnd}"
        d, where = self.start(flavor, wd)
        try:
            setup = ["import numpy as np", f"big = np.random.default_rng(2).random({m})"]
            if wl == "w2":
                setup.append("lst = []")
            self.setup(d, flavor, where, setup, s)
            if wl == "w2":  # cheap cells: repeat them in the same kernel to tame noise
                for _ in range(self.args.reps_w2_cells):
                    s.heads = []
                    self.cells(d, flavor, W2_CELLS, s)
            else:
                self.cells(d, flavor, w3_cells(m), s)
            if flavor.startswith("fm"):
                s.stored = fm_stored(where["history"])
            if flavor == "fm" and wl == "w2":
                big_id = d.ask(i="str(id(big))")["i"]

                def check2(dr: Driver, i: int) -> str | None:
                    got = dr.ask(v="str((s, id(big)))")["v"]
                    want = str((1 if i < 8 else 8, int(big_id)))
                    return None if got == want else f"(s, id(big)) = {got}, expected {want}"
                self.rewinds(d, flavor, s, 5, 10, self.args.reps_small, check2)
            if flavor == "fm" and wl == "w3":
                p9 = 9 * m // 10

                def check3(dr: Driver, i: int) -> str | None:
                    got = dr.ask(v=f"str((bool(big[0] >= 1), bool(big[{p9}] >= 1)))")["v"]
                    want = str((True, i >= 10))
                    return None if got == want else f"slices 0/9 touched = {got}, expected {want}"
                self.rewinds(d, flavor, s, 5, 10, self.args.reps_big, check3)
        finally:
            d.shutdown()
        if flavor.startswith("fm"):
            s.stored = fm_stored(where["history"])  # after shutdown (DuckDB checkpointed)
        shutil.rmtree(wd, ignore_errors=True)
        return s

    def kishu_ok(self) -> bool:
        if self.args.no_kishu:
            self.kishu_error = "skipped (--no-kishu)"
            return False
        if not Path(self.kishu_py).exists():
            self.kishu_error = (f"no Kishu venv at {self.kishu_py}; run with --setup-kishu "
                                f"(pip install kishu=={KISHU_VERSION} into /tmp/kishu-venv)")
            return False
        r = subprocess.run([self.kishu_py, "-c", "import kishu, numpy, pandas, ipykernel; "
                            "from importlib.metadata import version as v; "
                            "print(v('kishu'), numpy.__version__, pandas.__version__, ipykernel.__version__)"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.kishu_error = "Kishu venv broken: " + r.stderr.strip().splitlines()[-1]
            return False
        self.kishu_versions = r.stdout.split()
        return True


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def per_cell(sessions: list[Session]) -> list[float]:
    """Median over rounds, per cell."""
    return [med([s.cells[i] for s in sessions]) for i in range(len(sessions[0].cells))]


def added(a: list[Session], base: list[Session]) -> list[float]:
    return [x - y for x, y in zip(per_cell(a), per_cell(base))]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(rows: list[list[str]], head: list[str]) -> str:
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows])


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def probe_med(sessions: list[Session], i: int, key: str) -> float:
    return med([s.probes[i].get(key, 0.0) for s in sessions])


def versions(bench: Bench) -> dict[str, str]:
    import duckdb
    import ipykernel
    import numpy
    import pandas

    v = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.machine(),
         "cpus": str(os.cpu_count()), "kernel": platform.release(),
         "python": platform.python_version(), "duckdb": duckdb.__version__,
         "numpy": numpy.__version__, "pandas": pandas.__version__, "ipykernel": ipykernel.__version__}
    kv = getattr(bench, "kishu_versions", None)
    if kv:
        v["kishu venv"] = f"kishu {kv[0]}, numpy {kv[1]}, pandas {kv[2]}, ipykernel {kv[3]}"
    return v


def setup_kishu(path: str) -> None:
    import ipykernel
    import numpy
    import pandas

    venv = Path(path).parent.parent
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"kishu=={KISHU_VERSION}",
                    f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}",
                    f"ipykernel=={ipykernel.__version__}"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=100,000 and 100 MB arrays; < 1 minute")
    ap.add_argument("--no-kishu", action="store_true")
    ap.add_argument("--kishu-python", default=DEFAULT_KISHU_PY)
    ap.add_argument("--setup-kishu", action="store_true", help="create the Kishu venv, then run")
    ap.add_argument("--rounds", type=int, help="W1 rounds per kernel (default 3, quick 1)")
    ap.add_argument("--json", help="write every sample here")
    ap.add_argument("--only", default="w1,w2,w3", help="comma-separated workloads to run (default all)")
    args = ap.parse_args()
    args.n = 100_000 if args.quick else 1_000_000
    args.m = 13_107_200 if args.quick else 134_217_728  # 100 MiB / 1 GiB of float64
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.only = {w.strip().lower() for w in args.only.split(",")}
    args.reps_w1 = 2 if args.quick else 3
    args.reps_small = 3 if args.quick else 5
    args.reps_big = 1 if args.quick else 3
    args.reps_w2_cells = 2 if args.quick else 3
    if args.setup_kishu and not Path(args.kishu_python).exists():
        setup_kishu(args.kishu_python)

    began = time.perf_counter()
    load_before = os.getloadavg()
    b = Bench(args)
    use_kishu = b.kishu_ok()
    big_bytes = args.m * 8

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {msg}", file=sys.stderr, flush=True)

    W1: dict[str, list[Session]] = {}
    flavors = ["py", "fm", "fm-nofsync"] + (["kishu-base", "kishu"] if use_kishu else [])
    try:
        for rnd in range(args.rounds if "w1" in args.only else 0):
            order = flavors if rnd % 2 == 0 else flavors[::-1]
            for f in order:
                if f.startswith("kishu") and not use_kishu:
                    continue
                say(f"W1 round {rnd + 1}/{args.rounds}: {f}")
                try:
                    W1.setdefault(f, []).append(b.w1_session(f, rnd))
                except Exception as exc:
                    if not f.startswith("kishu"):
                        raise
                    use_kishu = False
                    b.kishu_error = f"{type(exc).__name__}: {str(exc).strip()[-1500:]}"
                    W1.pop("kishu", None)
                    W1.pop("kishu-base", None)
                    say(f"Kishu failed: {b.kishu_error}")
        BIG: dict[str, dict[str, Session]] = {"w2": {}, "w3": {}}
        for wl in [w for w in ("w2", "w3") if w in args.only]:
            for f in ("py", "fm") + (("fm-nofsync",) if wl == "w3" else ()):
                say(f"{wl.upper()}: {f} ({human(big_bytes)} array)")
                BIG[wl][f] = b.big_session(wl, f, 0)
    finally:
        shutil.rmtree(b.tmp, ignore_errors=True)
    say("done")

    # ---- figures ---------------------------------------------------------------
    results: list[tuple[str, str, str, bool | None]] = []  # (what, measured, target, pass)
    out: list[str] = []
    v = versions(b)
    out.append("## Machine\n")
    out += [f"- {k}: {val}" for k, val in v.items()]
    out.append(f"- mode: {'quick (N=100,000, 100 MB arrays)' if args.quick else 'full (N=1,000,000, 1 GB arrays)'}; "
               f"W1 rounds per kernel: {args.rounds}; wall time {time.perf_counter() - began:.0f} s")
    load_after = os.getloadavg()
    out.append(f"- load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
               f"after: {'/'.join(f'{x:.2f}' for x in load_after)}"
               + ("  **WARNING: the machine was busy with other work; latencies are inflated and noisy**"
                  if max(load_before[0], load_after[0]) > 1.5 else ""))

    if "w1" in args.only:
        cells = w1_cells()
        fm_add = added(W1["fm"], W1["py"])
        nf_add = added(W1["fm-nofsync"], W1["py"])
        k_add = added(W1["kishu"], W1["kishu-base"]) if "kishu" in W1 else None
        rows = []
        for i, c in enumerate(cells):
            fm_s = W1["fm"]
            r = [str(i + 1), f"`{c}`", ms(per_cell(W1["py"])[i]), ms(per_cell(fm_s)[i]), ms(fm_add[i]),
                 ms(nf_add[i])]
            r += [ms(k_add[i]) if k_add else "n/a"]
            r += [ms(probe_med(fm_s, i, "capture")), ms(probe_med(fm_s, i, "pickle_hash")),
                  ms(probe_med(fm_s, i, "write")),
                  ms(med([s.probes[i].get("begin", 0.0) + s.probes[i].get("finish", 0.0) for s in fm_s])),
                  human(probe_med(fm_s, i, "written"))]
            rows.append(r)
        out.append(f"\n## W1: ten cells, N = {args.n:,} (ms, median over {args.rounds} round(s))\n")
        out.append(table(rows, ["#", "cell", "python3", "flowmetal", "fm added", "fm added (no fsync)",
                                "Kishu added", "capture", "pickle+hash", "write(+fsync)", "DuckDB commit",
                                "bytes written"]))
        out.append("\n`fm added` = flowmetal − python3; `Kishu added` = Kishu − stock ipykernel of Kishu's venv. "
                   "capture/pickle+hash/write/DuckDB commit: medians of timings taken inside the flowmetal kernel "
                   "(object fsync on); capture includes pickle+hash and write.")
        m_fm, m_nf = med(fm_add), med(nf_add)
        sum_fm, sum_nf = sum(fm_add), sum(nf_add)
        summary = [["flowmetal (fsync on)", ms(m_fm), ms(sum_fm / 10), ms(max(fm_add)), ms(sum_fm)],
                   ["flowmetal (fsync off)", ms(m_nf), ms(sum_nf / 10), ms(max(nf_add)), ms(sum_nf)]]
        if k_add:
            summary.append(["Kishu 0.3.4", ms(med(k_add)), ms(sum(k_add) / 10), ms(max(k_add)), ms(sum(k_add))])
        out.append("\nAdded time per cell, W1 (ms):\n")
        out.append(table(summary, ["kernel", "median", "mean", "max", "total over 10 cells"]))
        results.append(("W1 median added time per cell", f"{ms(m_fm)} ms (fsync off: {ms(m_nf)} ms)",
                        f"≤ {T_ADDED_W1_MS:.0f} ms", m_fm * 1000 <= T_ADDED_W1_MS))
        fm_bytes = med([s.stored for s in W1["fm"]])
        if k_add:
            mk = med(k_add)
            ratio = m_fm / mk if mk > 0 else float("inf")
            results.append(("W1 added time vs Kishu", f"{ms(m_fm)} / {ms(mk)} ms = {ratio:.3f}×"
                            f" (totals: {sum_fm / sum(k_add):.3f}×)",
                            f"≤ {T_RATIO_KISHU_TIME:.2f}×", ratio <= T_RATIO_KISHU_TIME))
            k_bytes = med([s.stored for s in W1["kishu"]])
            results.append(("W1 stored bytes vs Kishu", f"{human(fm_bytes)} / {human(k_bytes)} = {fm_bytes / k_bytes:.3f}×",
                            f"≤ {T_RATIO_KISHU_BYTES:.3f}×", fm_bytes / k_bytes <= T_RATIO_KISHU_BYTES))
        else:
            results.append(("W1 added time vs Kishu", "Kishu not measured", f"≤ {T_RATIO_KISHU_TIME:.2f}×", None))
            results.append(("W1 stored bytes vs Kishu", f"flowmetal {human(fm_bytes)}; Kishu not measured",
                            f"≤ {T_RATIO_KISHU_BYTES:.3f}×", None))
        out.append(f"\nStored after W1: flowmetal {human(fm_bytes)} ({fm_bytes:,} B: history .duckdb + .objects/)"
                   + (f"; Kishu {human(k_bytes)} ({k_bytes:,} B: .kishudb + .kishu/)" if k_add else "")
                   + f"; raw data of a, b, df, means ≈ {human(args.n * 8 * 2 + args.n * 8 * 4)}")

        def rw(f: str, key: str) -> float:
            return med([x for s in W1[f] for x in s.rewinds[key]])
        rrows = [[f, ms(rw(f, "to6")), ms(rw(f, "to10"))] for f in ("fm", "fm-nofsync", "kishu") if f in W1]
        out.append("\nW1 rewind (`%fm rewind`) / Kishu checkout, ms, median over all rounds × repetitions:\n")
        out.append(table(rrows, ["kernel", "HEAD@10 → state after cell 6", "→ back to cell 10"]))
        fm_rw = med([rw("fm", "to6"), rw("fm", "to10")])
        if "kishu" in W1:
            k_rw = med([rw("kishu", "to6"), rw("kishu", "to10")])
            results.append(("W1 rewind vs Kishu checkout", f"{ms(fm_rw)} / {ms(k_rw)} ms = {fm_rw / k_rw:.3f}×",
                            f"≤ {T_RATIO_KISHU_CHECKOUT:.2f}×", fm_rw / k_rw <= T_RATIO_KISHU_CHECKOUT))
        else:
            results.append(("W1 rewind vs Kishu checkout", f"flowmetal {ms(fm_rw)} ms; Kishu not measured",
                            f"≤ {T_RATIO_KISHU_CHECKOUT:.2f}×", None))

    if "w2" in args.only:
        # W2
        w2 = BIG["w2"]
        def w2_cell(f: str, i: int) -> float:
            return med(w2[f].cells[i::10])

        def w2_probe(i: int, key: str) -> float:
            return med([p.get(key, 0) for p in w2["fm"].probes[i::10]])
        w2_add = [w2_cell("fm", i) - w2_cell("py", i) for i in range(10)]
        out.append(f"\n## W2: {human(big_bytes)} array untouched + ten small cells (ms, median of "
                   f"{args.reps_w2_cells} passes over the ten cells in the same kernel)\n")
        rows = [[str(i + 1), f"`{c}`", ms(w2_cell("py", i)), ms(w2_cell("fm", i)), ms(w2_add[i]),
                 ms(w2_probe(i, "capture")), human(w2_probe(i, "hashed")),
                 str(w2["fm"].probes[i].get("full_scan") or "")]
                for i, c in enumerate(W2_CELLS)]
        out.append(table(rows, ["#", "cell", "python3", "flowmetal", "added", "capture", "bytes hashed",
                                "full scan reason"]))
        sp = w2["fm"].setup_probes[1]
        out.append(f"\nUnmeasured setup cell that made the array: python3 {w2['py'].setup_s[1]:.2f} s, "
                   f"flowmetal {w2['fm'].setup_s[1]:.2f} s (capture {sp.get('capture', 0):.2f} s, of which "
                   f"waiting for chunk writes + sync {sp.get('write', 0):.2f} s, pickle+hash (writes "
                   f"under way meanwhile) {sp.get('pickle_hash', 0):.2f} s; "
                   f"{human(sp.get('written', 0))} written)")
        results.append(("W2 median added time per small cell", f"{ms(med(w2_add))} ms", f"≤ {T_ADDED_W2_MS:.0f} ms",
                        med(w2_add) * 1000 <= T_ADDED_W2_MS))

    if "w3" in args.only:
        # W3
        w3 = BIG["w3"]
        w3_add = [x - y for x, y in zip(w3["fm"].cells, w3["py"].cells)]
        w3n_add = [x - y for x, y in zip(w3["fm-nofsync"].cells, w3["py"].cells)]
        out.append(f"\n## W3: ten cells each adding 1 to a different 1% of a {human(big_bytes)} array (ms)\n")
        rows = [[str(i + 1), ms(w3["py"].cells[i]), ms(w3["fm"].cells[i]), ms(w3_add[i]), ms(w3n_add[i]),
                 ms(w3["fm"].probes[i].get("capture", 0)), ms(w3["fm"].probes[i].get("pickle_hash", 0)),
                 ms(w3["fm"].probes[i].get("write", 0)), human(w3["fm"].probes[i].get("written", 0))]
                for i in range(10)]
        out.append(table(rows, ["#", "python3", "flowmetal", "added", "added (no fsync)", "capture",
                                "pickle+hash", "write(+fsync)", "bytes written"]))
        stored3 = w3["fm"].stored
        for f in ("fm", "fm-nofsync"):
            sp = w3[f].setup_probes[1]
            out.append(f"\nSetup cell making the array, {f}: {w3[f].setup_s[1]:.2f} s (python3 {w3['py'].setup_s[1]:.2f} s); "
                       f"capture {sp.get('capture', 0):.2f} s = pickle+hash {sp.get('pickle_hash', 0):.2f} s + "
                       f"write{'+fsync' if f == 'fm' else ''} {sp.get('write', 0):.2f} s + rest; {human(sp.get('written', 0))} written.")
        out.append(f"\nMedian added per cell: {ms(med(w3_add))} ms (fsync off: {ms(med(w3n_add))} ms). "
                   f"Stored after the array + ten cells: {human(stored3)} ({stored3:,} B) = "
                   f"{stored3 / big_bytes:.3f}× the array.")
        results.append(("W3 stored bytes", f"{human(stored3)} = {stored3 / big_bytes:.3f}× the array",
                        f"≤ {T_W3_STORED_FACTOR}× ({human(T_W3_STORED_FACTOR * big_bytes)})",
                        stored3 <= T_W3_STORED_FACTOR * big_bytes))

    # Rewinds
    rows = []
    if "w2" in args.only:
        r_small = w2["fm"].rewinds
        small = med(r_small["to5"] + r_small["to10"])
        rows.append(["W2: only small names differ (big array kept)", ms(med(r_small["to5"])), ms(med(r_small["to10"])),
                     ", ".join(ms(x) for x in r_small["to5"] + r_small["to10"])])
        results.append(("Rewind, small names differ", f"{ms(small)} ms", f"≤ {T_REWIND_SMALL_MS:.0f} ms",
                        small * 1000 <= T_REWIND_SMALL_MS))
    if "w3" in args.only:
        r_big = w3["fm"].rewinds
        bigr = med(r_big["to5"] + r_big["to10"])
        rows.append(["W3: the big array differs (reloaded whole)", ms(med(r_big["to5"])), ms(med(r_big["to10"])),
                     ", ".join(ms(x) for x in r_big["to5"] + r_big["to10"])])
        results.append((f"Rewind, {human(big_bytes)} array differs", f"{bigr:.2f} s", f"≤ {T_REWIND_BIG_S} s",
                        bigr <= T_REWIND_BIG_S))
    if rows:
        out.append("\n## Rewind latency (`%fm rewind K`, client wall time, ms)\n")
        out.append(table(rows, ["case", "→ after cell 5", "→ after cell 10", "all samples"]))

    checks = [f"{s.flavor}: {c}" for ss in W1.values() for s in ss for c in s.checks]
    checks += [f"{wl}/{f}: {c}" for wl in BIG for f, s in BIG[wl].items() for c in s.checks]

    out.append("\n## Targets\n")
    out.append(table([[w, m, t, "n/a" if p is None else ("PASS" if p else "FAIL")] for w, m, t, p in results],
                     ["what", "measured", "target", "result"]))
    if b.kishu_error:
        out.append(f"\nKishu: NOT MEASURED — {b.kishu_error}")
    out.append("\nRestored namespaces checked after every rewind/checkout: "
               + ("all as expected." if not checks else "PROBLEMS:\n" + "\n".join("- " + c for c in checks)))
    print("\n".join(out))

    if args.json:
        dump = {"versions": v, "args": {k: val for k, val in vars(args).items()},
                "w1": {f: [s.__dict__ for s in ss] for f, ss in W1.items()},
                "big": {wl: {f: s.__dict__ for f, s in d.items()} for wl, d in BIG.items()},
                "kishu_error": b.kishu_error,
                "results": results}
        Path(args.json).write_text(json.dumps(dump, indent=1, default=str))
    failed = any(p is False for *_, p in results) or bool(checks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
