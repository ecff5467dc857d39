"""What `%fm help`, `%fm CMD -h` and Tab completion after `%fm` say: one
line per sub-command (the argparse descriptions are taken from here, so the
overview and each command's own help never disagree), and an IPython
completer for sub-commands, step numbers, branch names and variable names."""

from __future__ import annotations

from typing import Any, Callable

SUMMARY: dict[str, str] = {
    "log": "HEAD's ancestry (or --all, --branch B), newest last, sessions marked",
    "show": "code, outputs, duration and variables of one step",
    "status": "history path, size, HEAD, branch, pending flow runs",
    "rewind": "the namespace becomes the state after STEP; HEAD moves there",
    "undo": "rewind N steps back on this branch (default 1)",
    "fork": "new branch at STEP (default HEAD), and switch to it",
    "checkout": "switch HEAD to a branch or step, restoring its state",
    "branches": "branches with their head step and the step each forked from",
    "diff": "variables added, removed and changed between two steps",
    "resume": "restore the last recorded state (after a restart)",
    "export": "write a self-contained bundle of this history",
    "timeline": "the time-travel widget: steps, outputs, branches (a text graph in a console)",
    "inspect": "the state-inspector widget: the variables of a step as they were (a table in a console)",
    "runs": "flow runs and their status, newest first",
    "sql": "read-only DuckDB SQL over the history views (as %%sql / %%fmsql)",
    "adopt": "continue another notebook's history here, as a fork (a copy's original)",
    "help": "every sub-command with one line each; `%fm help CMD` for one",
}

# what a sub-command's first argument is, for completion
_ARG_KIND = {"show": "step", "rewind": "step", "undo": None, "fork": None, "checkout": "ref",
             "diff": "step", "inspect": "step"}


def overview(commands: list[str]) -> str:
    width = max(len(c) for c in commands)
    lines = [f"  %fm {c.ljust(width)}  {SUMMARY.get(c, '')}" for c in sorted(commands)]
    return "Flowmetal history commands (`%fm CMD -h` for the arguments of one):\n" + "\n".join(lines)


def completer(commands: list[str], rt: Callable[[], Any]) -> Callable[[Any, Any], list[str]]:
    """An IPython `complete_command` hook for `%fm`: sub-commands first, then
    step numbers, branch names (checkout) or nothing."""

    def complete(_shell: Any, event: Any) -> list[str]:
        words = event.line.split()
        typing_first = len(words) == 1 or (len(words) == 2 and not event.line.endswith(" "))
        if typing_first:
            return sorted(commands)
        kind = _ARG_KIND.get(words[1])
        if kind is None:
            return []
        try:
            store = rt().require_store()
            steps = [str(r[0]) for r in store.steps(limit=200).rows]
            branches = [r[0] for r in store.branches().rows] if kind == "ref" else []
        except Exception:  # completion must never raise into the frontend
            return []
        return branches + steps[::-1]

    return complete
