"""`%fm` sub-commands: parse arguments, call the modules that do the work,
print a concise table. Bad arguments raise IPython's UsageError, which the
shell shows as one line, never a traceback."""

from __future__ import annotations

import argparse
import shlex
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display, publish_display_data

from . import errors, magic_help
from .state import navigate
from .record import querying
from . import runtime
from .state.states import diff
from .record.recorder import unflatten_outputs
from .tables import branch_table_text, format_table, human_bytes, step_log_table


class _HelpShown(Exception):
    """`-h` printed a command's help: nothing else to do."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise UsageError(f"{self.prog}: {message} (usage: {self.format_usage().strip()[7:]})")

    def exit(self, status: int = 0, message: str | None = None):  # after -h: no SystemExit
        raise _HelpShown()


def _parser(name: str) -> _Parser:
    prog = "%%sql" if name == "sql" else f"%fm {name}"
    return _Parser(prog=prog, description=magic_help.SUMMARY.get(name))


def _with_rebuild(p: _Parser) -> _Parser:
    p.add_argument("--rebuild", metavar="NAME[,NAME]", default=[],
                   type=lambda v: [n.strip() for n in v.split(",") if n.strip()],
                   help="re-create these untracked objects by re-running the statement that "
                        "made them (kept as they are otherwise)")
    return p


def _inert(data: dict[str, Any], history: Any) -> dict[str, Any]:
    """The parts of a stored output a frontend cannot run; one line for the rest."""
    from .record.trust import inert_parts

    kept, held = inert_parts(data)
    if held:
        print(f"({', '.join(held)} not shown: this history is not trusted here; "
              f"`fm trust {history}` shows it)")
    return kept


@magics_class
class FlowmetalMagics(Magics):
    def __init__(self, shell: Any):
        super().__init__(shell)
        self._commands: dict[str, Callable[[list[str]], None]] = {
            "log": self._log,
            "show": self._show,
            "status": self._status,
            "rewind": self._rewind,
            "undo": self._undo,
            "fork": self._fork,
            "checkout": self._checkout,
            "branches": self._branches,
            "diff": self._diff,
            "resume": self._resume,
            "export": self._export,
            "timeline": self._timeline,
            "inspect": self._inspect,
            "runs": self._runs,
            "sql": self._sql,
            "adopt": self._adopt,
        }
        shell.set_hook("complete_command", magic_help.completer([*self._commands, "help"], runtime.current),
                       str_key="%fm")

    @line_magic
    def fm(self, line: str) -> None:
        """Flowmetal history commands: %fm log | show STEP | status"""
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%fm: cannot parse arguments: {exc}") from None
        if not args or args[0] in ("help", "-h", "--help"):
            self._help(args[1:])
            return
        command = self._commands.get(args[0])
        if command is None:
            raise UsageError(
                f"%fm: unknown command {args[0]!r}; try one of: {', '.join(sorted(self._commands))}"
            )
        try:
            command(args[1:])
        except _HelpShown:
            pass
        except errors.FlowmetalError as exc:
            raise UsageError(str(exc)) from None

    def _help(self, argv: list[str]) -> None:
        if not argv:
            print(magic_help.overview([*self._commands, "help"]))
            return
        command = self._commands.get(argv[0])
        if command is None:
            raise UsageError(f"%fm help: no command {argv[0]!r}; `%fm help` lists them")
        try:
            command(["-h"])
        except _HelpShown:
            pass

    @line_cell_magic
    def sql(self, line: str, cell: str | None = None):
        """%sql QUERY or %%sql [-o NAME]: read-only DuckDB SQL over the history views."""
        try:
            args = shlex.split(line) if cell is not None else []
        except ValueError as exc:
            raise UsageError(f"%%sql: cannot parse arguments: {exc}") from None
        name = None
        if cell is None:
            query = line
            m = line.strip().split(None, 2)
            if len(m) >= 2 and m[0] == "-o":
                name, query = m[1], (m[2] if len(m) > 2 else "")
        else:
            p = _parser("sql")
            p.add_argument("-o", dest="name", metavar="NAME", help="keep every row as a DataFrame in NAME")
            try:
                name = p.parse_args(args).name
            except _HelpShown:
                return None
            query = cell
        if name is not None and not name.isidentifier():
            raise UsageError(f"%%sql -o: {name!r} is not a valid Python name")
        rt = runtime.current()
        ns = self.shell.user_ns
        try:
            # What is only shown is capped; `-o NAME` keeps every row, like fm.history().sql.
            res = querying.run(rt.require_store(), query, querying.namespace_params(query, ns),
                               rt.frame_path,
                               limit_rows=querying.max_rows() if name is None else None)
        except errors.FlowmetalError as exc:
            hint = querying.live_name_hint(str(exc), ns)
            raise UsageError(str(exc) + (f"\n{hint}" if hint else "")) from None
        if res.truncated:
            print(querying.truncated_note(res))
        try:
            frame = res.to_pandas()
        except ImportError:
            print(format_table(res.columns, res.rows))
            return None
        if name is not None:
            self.shell.user_ns[name] = frame
        return frame

    @line_cell_magic
    def fmsql(self, line: str, cell: str | None = None):
        """%%fmsql: the same as %%sql, for when another extension (jupysql) owns %%sql."""
        return self.sql(line, cell)

    # -- commands ------------------------------------------------------------

    def _sql(self, argv: list[str]) -> None:
        if argv[:1] in (["-h"], ["--help"]):
            _parser("sql").print_help()
            return
        frame = self.sql(" ".join(argv))
        if frame is not None:
            display(frame)

    def _log(self, argv: list[str]) -> None:
        from .record.lineage import step_log

        p = _parser("log")
        p.add_argument("-n", type=int, default=20, help="how many steps (the newest)")
        p.add_argument("--all", action="store_true",
                       help="every step, each under its branch (default: HEAD's ancestry)")
        p.add_argument("--branch", metavar="B", help="branch B's ancestry instead of HEAD's")
        a = p.parse_args(argv)
        if a.n < 1:
            raise UsageError("%fm log: -n must be at least 1")
        rt = runtime.current()
        log = step_log(rt.require_store().query, (rt.branch, rt.head), a.branch, a.all, a.n)
        if not log.rows:
            more = "; `%fm log --all` lists every step" if log.total else ""
            print(f"no steps yet on branch {a.branch or rt.branch}{more}")
            return
        print(step_log_table(log.rows, log.head, log.sessions))

    def _show(self, argv: list[str]) -> None:
        p = _parser("show")
        p.add_argument("step", type=int)
        a = p.parse_args(argv)
        rec = runtime.current().require_store().step(a.step)
        if rec is None:
            raise errors.NoSuchStep(a.step)
        took = f"{rec.duration_ms:.0f} ms" if rec.duration_ms is not None else "-"
        print(f"step {rec.step} on {rec.branch} (parent {rec.parent}) · {rec.status} · {took} · "
              f"started {rec.started_at:%Y-%m-%d %H:%M:%S}")
        print("code:")
        print("    " + rec.code.replace("\n", "\n    "))
        if rec.error_name:
            print(f"error: {rec.error_name}: {rec.error_value}")
        outs = unflatten_outputs(rec.outputs)
        if outs:
            print(f"outputs ({len(outs)}):")
        # The frontend runs what it is handed as trusted output: a history
        # not trusted here gets its markup and scripts shown as text only.
        from .record import trust

        store = runtime.current().require_store()
        trusted = trust.gate(store).trusted
        for out in outs:
            kind = out["output_type"]
            if kind == "stream":
                print(out["text"], end="" if out["text"].endswith("\n") else "\n")
            elif kind in ("display_data", "execute_result", "update_display_data"):
                data = out["data"] if trusted else _inert(out["data"], store.path)
                if data:
                    publish_display_data(data, (out.get("metadata") or {}) if trusted else {})
            elif kind == "error":
                print(f"{out['ename']}: {out['evalue']}")

    def _status(self, argv: list[str]) -> None:
        _parser("status").parse_args(argv)
        rt = runtime.current()
        store = rt.require_store()
        count, pending = store.step_count(), store.pending_run_count()
        rows = [
            ("history", str(store.path)),
            ("size", human_bytes(store.size_bytes())),
            ("HEAD", f"{rt.branch} @ step {rt.head}" if rt.head else f"{rt.branch} (empty namespace)"),
            ("steps", str(count)),
            ("pending runs", str(pending)),
            ("kernel", rt.kernel_id),
        ]
        if rt.states is not None and rt.states.gc_line:
            rows.append(("gc at open", rt.states.gc_line.removeprefix("flowmetal gc: ")))
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))

    def _rewind(self, argv: list[str]) -> None:
        p = _parser("rewind")
        p.add_argument("step", type=int)
        a = _with_rebuild(p).parse_args(argv)
        print(navigate.rewind(runtime.current(), a.step, rebuild=a.rebuild))

    def _undo(self, argv: list[str]) -> None:
        p = _parser("undo")
        p.add_argument("n", type=int, nargs="?", default=1)
        a = _with_rebuild(p).parse_args(argv)
        print(navigate.undo(runtime.current(), a.n, rebuild=a.rebuild))

    def _fork(self, argv: list[str]) -> None:
        p = _parser("fork")
        p.add_argument("name")
        p.add_argument("--from", dest="from_step", type=int, default=None, metavar="STEP")
        a = p.parse_args(argv)
        print(navigate.fork(runtime.current(), a.name, a.from_step))

    def _checkout(self, argv: list[str]) -> None:
        p = _parser("checkout")
        p.add_argument("ref", metavar="BRANCH|STEP")
        a = _with_rebuild(p).parse_args(argv)
        print(navigate.checkout(runtime.current(), a.ref, rebuild=a.rebuild))

    def _resume(self, argv: list[str]) -> None:
        _parser("resume").parse_args(argv)
        line = navigate.resume(runtime.current())
        print(line or "nothing to resume: this history has no recorded state yet")

    def _adopt(self, argv: list[str]) -> None:
        from .state.adopt import adopt

        p = _parser("adopt")
        p.add_argument("path", metavar="PATH", help="the original notebook, or its .duckdb history")
        print(adopt(runtime.current(), p.parse_args(argv).path))

    def _branches(self, argv: list[str]) -> None:
        from .record.lineage import branch_table

        _parser("branches").parse_args(argv)
        rt = runtime.current()
        rows, current = branch_table(rt.require_store().query, (rt.branch, rt.head))
        print(branch_table_text(rows, current))

    def _diff(self, argv: list[str]) -> None:
        p = _parser("diff")
        p.add_argument("a", type=int)
        p.add_argument("b", type=int)
        a = p.parse_args(argv)
        tl = runtime.current().require_states()
        d = diff(tl.manifest(a.a), tl.manifest(a.b))
        from . import widgets

        if widgets.in_widget_frontend():
            display(widgets.diff_widget(a.a, a.b))
            return
        rows = [(kind, name, before, after) for kind in d  # added, removed, changed, not tracked
                for name, before, after in d[kind]]
        if not rows:
            print(f"no differences between step {a.a} and step {a.b}")
            return
        print(format_table(["", "name", f"after step {a.a}", f"after step {a.b}"], rows))

    def _export(self, argv: list[str]) -> None:
        p = _parser("export")
        p.add_argument("path")
        from pathlib import Path

        from .record.bundle import export

        out = export(runtime.current().require_store(), Path(p.parse_args(argv).path).expanduser())
        print(f"exported this history to {out}; on another machine: fm import {out.name} --trust")

    def _timeline(self, argv: list[str]) -> None:
        p = _parser("timeline")
        p.add_argument("--all", action="store_true", help="all branches")
        p.add_argument("-n", type=int, default=50,
                       help="where widgets cannot be shown: how many steps the graph draws (the newest)")
        a = p.parse_args(argv)
        if a.n < 1:
            raise UsageError("%fm timeline: -n must be at least 1")
        from . import widgets

        if widgets.in_widget_frontend():
            display(widgets.timeline_widget(all_branches=a.all))
            return
        # a console or a script's client: the graph as text, no widget built
        print(widgets.timeline_text(all_branches=a.all, shown=a.n))

    def _inspect(self, argv: list[str]) -> None:
        p = _parser("inspect")
        p.add_argument("step", type=int, nargs="?", default=None)
        a = p.parse_args(argv)
        from . import widgets

        if widgets.in_widget_frontend():
            display(widgets.inspect_widget(a.step))
            return
        print(widgets.inspect_text(step=a.step))

    def _runs(self, argv: list[str]) -> None:
        p = _parser("runs")
        p.add_argument("-n", type=int, default=20)
        p.add_argument("--failed", action="store_true", help="only runs that ended with an error")
        p.add_argument("--status", help="only runs in this status")
        p.add_argument("--flow", help="only runs of this flow")
        a = p.parse_args(argv)
        from .flows import registry
        from . import widgets

        if widgets.in_widget_frontend() and not (a.failed or a.status or a.flow):
            display(widgets.runs_widget(a.n))
            return
        res = registry().journal.listing(a.n, a.status, a.flow, a.failed)
        if not res.rows:
            print("no flow runs match" if a.failed or a.status or a.flow else
                  "no flow runs yet; define one with @fm.flow and start it with .start(...)")
            return
        print(format_table(res.columns, res.rows))
