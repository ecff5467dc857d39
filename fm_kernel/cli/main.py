"""The `fm` command: argument parsing and printing only; the work is done by
the modules it calls."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from .. import errors
from ..record import location
from ..tables import branch_table_text, format_table, step_log_table
from . import tasks_cli


def _history_arg(value: str | None) -> Path:
    """--history takes a .duckdb file, or a notebook meaning that notebook's history."""
    if value:
        p = Path(value).expanduser().absolute()
        if p.suffix == ".ipynb":
            return location.history_path({"FM_NOTEBOOK": str(p)})
        return p
    return location.history_path()


def cmd_install(a: argparse.Namespace) -> int:
    from .install import install

    where = install(user=a.user, prefix=sys.prefix if a.sys_prefix else a.prefix)
    print(f"installed kernelspec flowmetal in {where}")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .headless import run_notebook
    from .parameters import parse_value

    params: dict = {}
    for name, value in a.param or []:
        params[name] = parse_value(value)
    for name, value in a.raw_param or []:
        params[name] = value
    bad = [n for n in params if not n.isidentifier()]
    if bad:
        raise errors.UsageError(f"parameter name {bad[0]!r} is not a Python name")
    return run_notebook(Path(a.notebook), out=Path(a.output) if a.output else None,
                        history=Path(a.history).absolute() if a.history else None,
                        params=params, fresh=a.fresh)


def run_sql(history: Path, query: str, params: list | None = None):
    """Read-only SQL on a history, opened directly or through its live kernel."""
    from ..record import querying
    from . import remote
    from ..record.store import Result, Store

    if not history.exists() and history.name.endswith(".ipynb.duckdb"):
        from ..record.identity import missing_history_hint

        # run by a kernel that was not told the notebook: name the session
        # histories holding its cells (docs/where-history-lives.md)
        raise errors.HistoryError(missing_history_hint(history.parent.parent / history.name[:-7]))
    try:
        store = Store.open(history, read_only=True)
    except errors.HistoryLocked:
        info = remote.live_endpoint(history)
        if info is None:
            raise errors.HistoryError(
                f"history {history} is held by a process with no endpoint; try again when it is done"
            ) from None
        out = remote.call(info, "POST", "/sql", {"query": query, "params": params or []})
        if out.get("truncated"):
            print(out.get("note", "truncated"), file=sys.stderr)
        return Result(out["columns"], [tuple(r) for r in out["rows"]], bool(out.get("truncated")))
    try:
        from ..state.states import States

        return querying.run(store, query, params or [], States(store, {}).frame_path)
    finally:
        store.close()


def _history_query(a: argparse.Namespace):
    history = _history_arg(a.history)
    return lambda sql, params: run_sql(history, sql, params)


def cmd_log(a: argparse.Namespace) -> int:
    from ..record.lineage import step_log

    if a.n is not None and a.n < 1:
        raise errors.UsageError("fm log: -n must be at least 1")
    log = step_log(_history_query(a), None, a.branch, a.all, a.n)
    if not log.rows:
        print("no steps yet" + ("; `fm log --all` lists every step" if log.total else ""))
        return 0
    print(step_log_table(log.rows, log.head, log.sessions))
    return 0


def cmd_branches(a: argparse.Namespace) -> int:
    from ..record.lineage import branch_table

    rows, current = branch_table(_history_query(a))
    print(branch_table_text(rows, current))
    return 0


def cmd_sql(a: argparse.Namespace) -> int:
    res = run_sql(_history_arg(a.history), a.query)
    if a.format == "json":
        print(json.dumps(res.dicts(), default=str, indent=1))
    elif a.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(res.columns)
        w.writerows(res.rows)
    else:
        print(format_table(res.columns, res.rows))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from ..flows.journal import Journal
    from ..record.bundle import export, require_history
    from ..record.store import Store

    history = _history_arg(a.history)
    require_history(history)
    try:
        store = Store.open(history)
    except errors.HistoryLocked:
        raise errors.HistoryError(
            f"a kernel holds {history}; run `%fm export PATH` in that notebook instead") from None
    try:
        # flow records a killed kernel left in its log go into the history
        # first, as the next kernel would put them: the copy holds every run
        Journal(store).close()
        out = export(store, Path(a.output))
    finally:
        store.close()
    print(f"exported {history} to {out}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from ..record.bundle import import_bundle

    target = _history_arg(a.history)
    info = import_bundle(Path(a.bundle), target, trusted=a.trust, force=a.force)
    print(f"imported {info.get('steps', '?')} steps into {target}")
    if not a.trust:
        print("objects were not trusted: states can be queried but not restored until you run "
              f"`fm trust {target}` (loading them unpickles, which runs code)")
    return 0


def cmd_trust(a: argparse.Namespace) -> int:
    from ..record.bundle import require_history, trust
    from ..record.store import Store

    history = _history_arg(a.history)
    require_history(history)
    store = Store.open(history)
    try:
        trust(store)
    finally:
        store.close()
    print(f"objects in {history} will load on this machine")
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    from ..record import gc
    from ..record.bundle import require_history
    from ..record.objects import ObjectFiles
    from ..record.store import Store

    history = _history_arg(a.history)
    require_history(history)
    store = Store.open(history)  # refused while a live kernel holds it
    try:
        print(gc.collect(store, ObjectFiles(store.sidecar(".objects"))).line())
    finally:
        store.close()
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    from ..record.rows import runs_query

    res = run_sql(_history_arg(a.history), *runs_query(a.n, a.status, a.flow, a.failed))
    if not res.rows:
        print("no flow runs in this history" + (" match" if a.status or a.flow or a.failed else ""))
        return 0
    print(format_table(res.columns, res.rows))
    return 0


def resolve_run(history: Path, given: str, live: bool) -> str:
    """A run id from the id itself or a unique prefix of it (the widgets show
    the first 8 characters). Runs whose records only reached the flow log
    (a kernel killed before its checkpoint) count too when no kernel is live."""
    import re
    import time

    from ..flows.journal import CHECKPOINT_INTERVAL, LOG_SUFFIX

    def matching() -> set[str]:
        sql = "SELECT DISTINCT run_id FROM runs WHERE starts_with(run_id, ?)"
        return {r[0] for r in run_sql(history, sql, [given]).rows}

    found = matching()
    if live and not found:  # a run just started reaches the runs view at the next checkpoint
        time.sleep(CHECKPOINT_INTERVAL + 0.3)
        found = matching()
    log_file = Path(str(history) + LOG_SUFFIX)
    if not live and log_file.exists():
        pattern = rb'"run_id": "(' + re.escape(given.encode()) + rb'[A-Za-z0-9_\-]*)"'
        found |= {m.decode() for m in re.findall(pattern, log_file.read_bytes())}
    if given in found or len(found) == 1:
        return given if given in found else found.pop()
    if not found:
        raise errors.UsageError(f"no flow run {given!r} in {history}, nor one whose id starts "
                                "with it; `fm runs` lists them")
    shown = ", ".join(sorted(found)[:3]) + (", ..." if len(found) > 3 else "")
    raise errors.UsageError(f"run id prefix {given!r} matches {len(found)} runs ({shown}); "
                            "give more of the id (`fm runs` lists them)")


def cmd_signal(a: argparse.Namespace) -> int:
    from . import remote

    try:
        data = json.loads(a.data) if a.data is not None else None
    except ValueError as exc:
        raise errors.UsageError(f"--data is not valid JSON: {exc}") from None
    from ..record.bundle import require_history

    history = _history_arg(a.history)
    info = remote.live_endpoint(history)
    if info is None:
        require_history(history)
    run = resolve_run(history, a.run, live=info is not None)
    if info is not None:
        remote.call(info, "POST", f"/runs/{run}/signals/{a.name}", data)
        print(f"signal {a.name!r} delivered to run {run}")
        return 0
    from ..flows.journal import signal_offline
    from ..record.store import Store

    store = Store.open(history)
    try:
        signal_offline(store, run, a.name, data)
    except KeyError as exc:
        raise errors.UsageError(str(exc.args[0])) from None
    finally:
        store.close()
    print(f"signal {a.name!r} kept for run {run}; it is delivered when a kernel or "
          "`fm worker` resumes the run")
    return 0


WORKER_HELP = (
    "Serve a history's pending runs, schedules and endpoint while no notebook has it open. "
    "A notebook kernel that opens the history takes it over: the worker answers requests "
    "503 with Retry-After for a moment, flushes and lets go; the kernel keeps the port and "
    "the token. The worker takes the history back when the kernel ends (or is killed). "
    "Started while a kernel holds the history, it stands by until the kernel lets go. "
    "A serving process that dies (killed -9, out of memory) is restarted after a growing "
    "pause, with one line each time; after 5 deaths within 60 s the worker exits 1 saying "
    "why. Killing the worker stops its serving process too. "
    "SIGTERM stops it. docs/reliability.md, \"One writer at a time\".")


def cmd_worker(a: argparse.Namespace) -> int:
    from .handover import supervise

    return supervise(_history_arg(a.history), stand_by=not a.exit_if_held)


def _add_run_parser(sub: Any) -> None:
    s = sub.add_parser("run", help="run a notebook headless with the flowmetal kernel")
    s.add_argument("notebook")
    s.add_argument("-o", "--output", metavar="OUT", help="where to write the executed notebook "
                   "(default: NAME.out.ipynb beside NAME.ipynb; the input is never overwritten)")
    s.add_argument("--history", metavar="H", help="history file (default: beside the notebook)")
    s.add_argument("-p", "--parameters", dest="param", nargs=2, action="append",
                   metavar=("NAME", "VALUE"), help="a parameter; VALUE read as a Python literal")
    s.add_argument("-r", "--parameters_raw", dest="raw_param", nargs=2, action="append",
                   metavar=("NAME", "VALUE"), help="a parameter kept as a string")
    s.add_argument("--fresh", action="store_true",
                   help="run every cell, ignoring an unfinished (failed or interrupted) earlier run")
    s.set_defaults(func=cmd_run)


def _add_log_parsers(sub: Any) -> None:
    s = sub.add_parser("log", help="steps of a history: HEAD's ancestry (docs/time-travel.md)")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.add_argument("--branch", metavar="B", help="branch B's ancestry instead of HEAD's")
    s.add_argument("--all", action="store_true", help="every step, each under its branch")
    s.add_argument("-n", type=int, default=None, help="only the newest N steps")
    s.set_defaults(func=cmd_log)

    s = sub.add_parser("branches", help="branches of a history: head, and the step each forked from")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.set_defaults(func=cmd_branches)


def _add_runs_parser(sub: Any) -> None:
    s = sub.add_parser("runs", help="flow runs of a history, newest first")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.add_argument("-n", type=int, default=50)
    s.add_argument("--failed", action="store_true", help="only runs that ended with an error")
    s.add_argument("--status", help="only runs in this status (running, waiting, failed, ...)")
    s.add_argument("--flow", help="only runs of this flow")
    s.set_defaults(func=cmd_runs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm", description="Flowmetal kernel: durable notebook history.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("install", help="install the flowmetal kernelspec")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="into the user's Jupyter folder")
    where.add_argument("--sys-prefix", action="store_true", help="into this environment")
    where.add_argument("--prefix", metavar="P", help="under prefix P")
    s.set_defaults(func=cmd_install)

    _add_run_parser(sub)

    _add_log_parsers(sub)

    s = sub.add_parser("sql", help="SQL over the history views")
    s.add_argument("query")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("export", help="write a self-contained bundle of a history")
    s.add_argument("history", nargs="?", help="history file or notebook (default: as the kernel finds it)")
    s.add_argument("-o", "--output", required=True, metavar="BUNDLE")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="make a bundle the history here")
    s.add_argument("bundle")
    s.add_argument("--history", metavar="H", help="where to put it: history file or notebook")
    s.add_argument("--trust", action="store_true",
                   help="allow its objects to load here (unpickling runs code: only for bundles you trust)")
    s.add_argument("--force", action="store_true", help="replace an existing history")
    s.set_defaults(func=cmd_import)

    _add_runs_parser(sub)

    s = sub.add_parser("signal", help="send a named signal to a flow run")
    s.add_argument("run", metavar="RUN")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--data", metavar="JSON", help="the signal's JSON payload")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.set_defaults(func=cmd_signal)

    s = sub.add_parser("worker", help="keep a history's scheduled flows and pending runs going",
                       description=WORKER_HELP)
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.add_argument("--exit-if-held", action="store_true",
                   help="exit 1 at once if a kernel holds the history, instead of standing by")
    s.set_defaults(func=cmd_worker)

    tasks_cli.add_task_parsers(sub)

    s = sub.add_parser("gc", help="reclaim object bytes that failed or killed writes left behind")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("trust", help="allow objects of a history made elsewhere to load here")
    s.add_argument("history", nargs="?")
    s.set_defaults(func=cmd_trust)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    command: list[str] = []
    if argv[:1] == ["task-worker"] and "--" in argv:
        # argparse's subcommands drop what follows "--": the task body's own argv
        command, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    a = parser.parse_args(argv)
    if command:
        a.command_args = command
    try:
        return a.func(a)
    except errors.FlowmetalError as exc:
        print(f"fm {a.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # duckdb's own errors (bad SQL) are one line too
        if type(exc).__module__.startswith(("duckdb", "_duckdb")):
            print(f"fm {a.command}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
