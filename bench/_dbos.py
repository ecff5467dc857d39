"""What the benchmarks beside DBOS Transact share (step_overhead.py,
queues.py, child_runs.py).

The DBOS side runs in a venv of its own (``python -m venv /tmp/dbos-venv &&
/tmp/dbos-venv/bin/pip install dbos``), never the project's: the benchmark
script runs itself there with ``--dbos-side`` and its arguments, and prints
one JSON line the flowmetal side reads. The scripts import this module by
name (bench/ is a script's own folder on ``sys.path``) in both pythons, so it
imports nothing of fm_kernel, nor dbos until the DBOS side asks for it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

DBOS_PYTHON = "/tmp/dbos-venv/bin/python"
SIDE_FLAG = "--dbos-side"


def side_args() -> list[str] | None:
    """The arguments after ``--dbos-side`` when this process is the DBOS side, else None."""
    return sys.argv[2:] if sys.argv[1:2] == [SIDE_FLAG] else None


def start(name: str) -> Any:
    """DBOS on a fresh SQLite system database; returns the DBOS class, to
    register workflows on before ``DBOS.launch()``."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": name,
                          "system_database_url": f"sqlite:///{tempfile.mkdtemp()}/dbos.sqlite"}
    DBOS(config=config)
    return DBOS


def report(figures: dict[str, Any]) -> NoReturn:
    """The DBOS side's last act: its figures and DBOS's version as one JSON
    line, then an exit that skips the interpreter's slow shutdown of DBOS's
    threads (flushed first: ``os._exit`` drops what stdout still buffers)."""
    from importlib.metadata import version

    from dbos import DBOS

    print(json.dumps({"version": version("dbos"), **figures}), flush=True)
    DBOS.destroy()
    os._exit(0)


def run_side(python: str, script: str, *args: Any, timeout: float = 600) -> dict[str, Any]:
    """``script --dbos-side args`` under ``python`` (in a temp folder); its
    JSON line. RuntimeError with the side's last line of stderr when it has none."""
    out = subprocess.run([python, script, SIDE_FLAG, *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, cwd=tempfile.mkdtemp())
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not line:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no output")
    return json.loads(line[-1])


def rounds(n: int, flowmetal: Callable[[], dict[str, Any]], python: str, script: str,
           *side: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` rounds, each the flowmetal side then the DBOS side, so the load
    of the machine falls on both alike; each round's figures go to stderr.
    A DBOS side that fails is said and left out; with no DBOS venv, none runs."""
    have_dbos = Path(python).exists()
    if not have_dbos:
        print(f"no DBOS at {python}: flowmetal alone", file=sys.stderr)
    fm_runs: list[dict[str, Any]] = []
    dbos_runs: list[dict[str, Any]] = []
    for r in range(n):
        fm_runs.append(flowmetal())
        if have_dbos:
            try:
                dbos_runs.append(run_side(python, script, *side))
            except Exception as exc:
                print(f"DBOS side failed: {exc}", file=sys.stderr)
        print(f"round {r + 1}: flowmetal {fm_runs[-1]}  dbos {dbos_runs[-1] if dbos_runs else None}",
              file=sys.stderr)
    return fm_runs, dbos_runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(x[key] for x in runs) if runs else float("nan")


def machine(dbos_runs: list[dict[str, Any]], n_rounds: int, extra: str = "") -> str:
    """One line: the machine, versions, time and load the figures were taken with."""
    load = os.getloadavg()
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}{extra}, dbos "
            f"{dbos_runs[0].get('version', '?') if dbos_runs else 'n/a'}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; medians of {n_rounds} rounds")
