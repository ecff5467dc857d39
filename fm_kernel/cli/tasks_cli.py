"""`fm tasks` (the tasks of a history, as the `tasks` view has them) and `fm
task-worker QUEUE MODULE:FUNCTION | -- COMMAND` (a worker doing them here)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Any, Callable

from .. import errors
from ..tables import format_table

TASKS_SQL = """
SELECT task_id[:8] AS task, run_id[:8] AS run, position, queue, status, attempt, worker,
       strftime(created_at, '%Y-%m-%d %H:%M:%S') AS created,
       round(epoch(finished_at) - epoch(created_at), 3) AS seconds,
       left(CAST(error AS VARCHAR), 60) AS error
FROM tasks
WHERE (CAST(? AS VARCHAR) IS NULL OR queue = ?) AND (CAST(? AS VARCHAR) IS NULL OR status = ?)
ORDER BY created_at DESC, position DESC
LIMIT ?
"""


def cmd_tasks(a: argparse.Namespace) -> int:
    from .main import _history_arg, run_sql

    res = run_sql(_history_arg(a.history), TASKS_SQL, [a.queue, a.queue, a.status, a.status, a.n])
    if not res.rows:
        print("no tasks in this history" + (" match" if a.queue or a.status else ""))
        return 0
    print(format_table(res.columns, res.rows))
    return 0


def task_body(target: str | None, command: list[str]) -> Callable[[Any], Any]:
    """The body a worker runs: MODULE:FUNCTION, or a command after ``--``."""
    from .task_worker import command_body

    if bool(target) == bool(command):
        raise errors.UsageError("give the task body: MODULE:FUNCTION, or -- COMMAND ARGS...")
    if command:
        return command_body(command)
    module, sep, func = str(target).partition(":")
    if not (sep and module and func):
        raise errors.UsageError(f"{target!r} is not MODULE:FUNCTION (e.g. mypkg.jobs:render)")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise errors.UsageError(f"{target}: {exc}") from None


def cmd_task_worker(a: argparse.Namespace) -> int:
    from .main import _history_arg
    from .task_worker import serve_tasks

    fn = task_body(a.target, list(a.command_args))
    if bool(a.url) != bool(a.token):
        raise errors.UsageError("--url and --token go together (or neither: the history's endpoint file)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a claim cut off is offered again
    history = None if a.url else _history_arg(a.history)
    done = serve_tasks(a.queue, fn, history=history, url=a.url, token=a.token, worker=a.name,
                       wait=a.wait, max_tasks=a.max_tasks)
    print(f"fm task-worker: {done} task(s) done", file=sys.stderr)
    return 0


def add_task_parsers(sub: Any) -> None:
    s = sub.add_parser("tasks", help="external tasks (fm.task) of a history, newest first")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.add_argument("--queue", metavar="Q", help="only this queue's tasks")
    s.add_argument("--status", help="only tasks in this status (queued, claimed, completed, failed, ...)")
    s.add_argument("-n", type=int, default=50)
    s.set_defaults(func=cmd_tasks)

    s = sub.add_parser("task-worker", help="do the tasks of a queue (fm.task) in this process",
                       description="Claim the tasks of QUEUE from the kernel or `fm worker` that "
                       "holds the history, do each with MODULE:FUNCTION (payload in, result out) "
                       "or with a command after -- (payload as JSON on stdin, result as JSON on "
                       "stdout, a nonzero exit fails the attempt), and record each result; "
                       "retries while the kernel is away. docs/integrations.md.")
    s.add_argument("queue", metavar="QUEUE")
    s.add_argument("target", nargs="?", metavar="MODULE:FUNCTION")
    s.add_argument("--history", metavar="H", help="history file or notebook")
    s.add_argument("--url", metavar="URL", help="the endpoint (with --token), instead of the history's file")
    s.add_argument("--token", metavar="TOKEN")
    s.add_argument("--name", metavar="NAME", help="this worker's name (default host-pid)")
    s.add_argument("--wait", type=float, default=30.0, metavar="S", help="long-poll wait (default 30)")
    s.add_argument("--max-tasks", type=int, default=None, metavar="N", help="stop after N tasks")
    s.set_defaults(func=cmd_task_worker, command_args=[])
