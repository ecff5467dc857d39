"""Soak: a session of 10,000 cells whose namespace grows and shrinks, through
the flowmetal kernel, with the standard python3 kernel's per-cell latency
measured in the same run as the baseline; then 50 concurrent flow runs with
timers and callbacks. Writes docs/img/soak.png (latency and kernel memory
over the session) and prints whether overhead stayed flat and memory bounded.

    .venv/bin/python bench/soak.py            # 10,000 cells (~4 minutes)
    .venv/bin/python bench/soak.py --cells 2000
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_driver import Kernel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cell(i: int) -> str:
    """Grow to ~200 names, then drop a band of them every 500 cells."""
    if i % 500 == 499:
        lo = (i // 500 % 4) * 50
        return "\n".join(f"globals().pop('v{j}', None)" for j in range(lo, lo + 50))
    return f"v{i % 200} = list(range({i % 300}))\ntotal = sum(v{i % 200})"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def session(kernel_name_env: dict[str, str], n: int, sample_every: int = 100,
            python3: bool = False) -> tuple[list[float], list[tuple[int, int]]]:
    from jupyter_client.manager import KernelManager

    times: list[float] = []
    memory: list[tuple[int, int]] = []
    if python3:
        km = KernelManager(kernel_name="python3")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        run = lambda code: kc.execute_interactive(code, timeout=60, output_hook=lambda m: None)
        pid = km.provisioner.process.pid  # type: ignore[union-attr]
    else:
        k = Kernel(env=kernel_name_env)
        run = lambda code: k.execute(code)
        pid = k.pid
    try:
        for i in range(n):
            t = time.perf_counter()
            run(cell(i))
            times.append((time.perf_counter() - t) * 1000)
            if i % sample_every == 0:
                memory.append((i, rss_kib(pid)))
        if not python3:
            flows_ok = fifty_runs(k)
            print(f"50 concurrent flow runs: {flows_ok}")
    finally:
        if python3:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        else:
            k.shutdown()
    return times, memory


FLOW = r'''
import fm_kernel as fm

@fm.step
def prepare(n):
    return n * 2

@fm.step
def finish(n, answer):
    return {"n": n, "answer": answer}

@fm.flow
def soak_job(n):
    x = prepare(n)
    fm.sleep(0.5)
    cb = fm.callback()
    CALLBACKS[n] = cb.url
    answer = cb.wait(timeout=60)
    return finish(x, answer)
'''


def fifty_runs(k: Kernel) -> str:
    r = k.execute("CALLBACKS = {}\n" + FLOW)
    assert r.status == "ok", r.content
    k.execute("runs50 = [soak_job.start(n) for n in range(50)]")
    posted: set[int] = set()
    deadline = time.monotonic() + 90
    while len(posted) < 50 and time.monotonic() < deadline:
        r = k.execute("", silent=True, user_expressions={"cb": "__import__('json').dumps(CALLBACKS)"})
        urls = json.loads(ast.literal_eval(r.content["user_expressions"]["cb"]["data"]["text/plain"]))
        for n, url in urls.items():
            if int(n) not in posted:
                req = urllib.request.Request(url, data=json.dumps({"ok": int(n)}).encode(), method="POST")
                urllib.request.urlopen(req, timeout=10).read()
                posted.add(int(n))
        time.sleep(0.2)
    r = k.execute("res = [r.result(timeout=60) for r in runs50]\n"
                  "assert res == [{'n': 2 * n, 'answer': {'ok': n}} for n in range(50)], res[:3]\n"
                  "import fm_kernel as fm\n"
                  "j = fm.history().sql(\"SELECT run_id, count(*) AS n, count(DISTINCT position) AS p,"
                  " count(DISTINCT position) FILTER (WHERE status = 'ok') = count(DISTINCT position) AS ok"
                  " FROM run_steps WHERE run_id IN (SELECT run_id FROM"
                  " runs WHERE flow = 'soak_job') GROUP BY run_id\")\n"
                  "print(len(j), int(j.p.min()), int(j.p.max()), bool(j.ok.all()))")
    if r.status != "ok":
        return f"FAIL: {r.content.get('ename')}: {r.content.get('evalue')}"
    runs, pmin, pmax, ok = r.text().split()
    good = runs == "50" and pmin == pmax and ok == "True"
    return f"{'PASS' if good else 'FAIL'} ({runs} runs, {pmin}-{pmax} journal positions each, all ok: {ok})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--baseline-cells", type=int, default=1_000)
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "soak.png"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fm-soak-"))
    env = {"FM_HISTORY": str(tmp / "h.duckdb")}
    print(f"machine: {os.uname().machine}, {os.cpu_count()} cpus; load {os.getloadavg()[0]:.2f}")
    base, _ = session({}, a.baseline_cells, python3=True)
    t0 = time.time()
    times, memory = session(env, a.cells)
    took = time.time() - t0
    n = len(times)
    first, last = statistics.median(times[: n // 10]), statistics.median(times[-n // 10:])
    mem_first = statistics.median([m for i, m in memory if i < n // 2][-5:] or [0])
    mem_last = statistics.median([m for i, m in memory][-5:])
    b = statistics.median(base)
    print(f"{n} cells in {took:.0f} s; python3 baseline median {b:.2f} ms/cell")
    print(f"flowmetal median: first tenth {first:.2f} ms, last tenth {last:.2f} ms "
          f"(added {first - b:.2f} -> {last - b:.2f} ms); flat: {'PASS' if last <= first * 1.3 + 1 else 'FAIL'}")
    print(f"kernel RSS: mid-session {mem_first / 1024:.0f} MiB, end {mem_last / 1024:.0f} MiB; "
          f"bounded: {'PASS' if mem_last <= mem_first * 1.3 else 'FAIL'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 3.6))
        window = 100
        roll = [statistics.median(times[max(0, i - window):i + 1]) for i in range(0, n, 20)]
        ax.plot(range(0, n, 20), roll, label="flowmetal: cell round trip (rolling median of 100)")
        ax.axhline(b, color="grey", linestyle="--", label=f"python3 kernel median ({b:.1f} ms)")
        ax.set_xlabel("cell")
        ax.set_ylabel("ms")
        ax2 = ax.twinx()
        ax2.plot([i for i, _ in memory], [m / 1024 for _, m in memory], color="tab:orange",
                 label="flowmetal kernel RSS")
        ax2.set_ylabel("MiB")
        ax2.set_ylim(bottom=0)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
        ax.set_title(f"{n} cells, namespace growing to ~200 names and shrinking every 500")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        print(f"plot: {a.plot}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
