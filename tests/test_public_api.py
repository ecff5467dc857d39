"""What users import is pinned: the names of ``fm_kernel``, ``fm_kernel.flows``
and ``fm_kernel.widgets``, that each resolves, and that ``import fm_kernel``
stays cheap (the error tree only; no flows, widgets, endpoint, tornado, duckdb
or ipywidgets). A change here is a change to the public interface: update the
list on purpose, and the docs with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fm_kernel
from fm_kernel import errors

pytestmark = pytest.mark.unit

FM_ALL = [
    "Callback", "Cancelled", "Flow", "FlowmetalError", "HistoryError", "NoSuchFlow", "NoSuchRun",
    "NonRetryable", "NondeterminismError", "NotStorable", "Queue", "Run", "Step", "StepContext", "StepError",
    "Timeout", "UsageError", "__version__", "callback", "checkout", "files", "flow", "fork", "get_run", "history",
    "map", "now", "patched", "poll", "random", "recv", "rewind", "runs", "send", "serve_tasks", "set_event", "sleep",
    "step", "step_context", "task", "undo", "uuid4", "wait_for",
]
FLOWS_ALL = [
    "Callback", "Cancelled", "Flow", "FlowError", "FlowRegistry", "NoSuchFlow", "NoSuchRun",
    "NondeterminismError", "NotStorable", "Run", "Step", "StepContext", "StepError", "Timeout",
    "callback", "configure", "flow", "get_run", "map", "now", "patched", "random", "registry", "runs",
    "sleep", "step", "step_context", "task", "uuid4", "wait_for", "event_source", "send_event",
    "wait_event", "recv", "send", "set_event", "files", "poll", "Queue",
]
WIDGETS_ALL = [
    "DEFAULT_PANELS", "DiffWidget", "InspectWidget", "RunsWidget", "Source", "TimelineWidget",
    "diff_widget", "in_widget_frontend", "inspect_text", "inspect_widget", "runs_widget",
    "timeline_text", "timeline_widget",
]
# `import fm_kernel` must not load any of these (module names or their prefixes).
NOT_AT_IMPORT = ("fm_kernel.flows", "fm_kernel.widgets", "fm_kernel.endpoint", "tornado", "duckdb",
                 "ipywidgets")


def test_fm_kernel_all_is_pinned() -> None:
    assert sorted(fm_kernel.__all__) == sorted(FM_ALL)
    assert len(set(fm_kernel.__all__)) == len(fm_kernel.__all__), "a name is listed twice"


def test_every_public_name_resolves_to_its_one_definition() -> None:
    import fm_kernel.api
    import fm_kernel.flows

    import fm_kernel.cli.task_worker

    history_api = {"checkout", "fork", "history", "rewind", "undo"}
    for name in FM_ALL:
        value = getattr(fm_kernel, name)
        if name == "__version__":
            assert isinstance(value, str) and value, value
            continue
        home = errors if hasattr(errors, name) else fm_kernel.api if name in history_api \
            else fm_kernel.cli.task_worker if name == "serve_tasks" else fm_kernel.flows
        assert getattr(home, name) is value, f"fm_kernel.{name} is not {home.__name__}.{name}"
    assert set(dir(fm_kernel)) >= set(FM_ALL)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        fm_kernel.no_such_name  # noqa: B018


def test_public_errors_are_in_the_one_tree() -> None:
    for name in FM_ALL:
        value = getattr(fm_kernel, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, errors.FlowmetalError), name
            assert getattr(errors, name) is value, f"{name} is not defined in fm_kernel.errors"


@pytest.mark.parametrize("module, pinned", [("fm_kernel.flows", FLOWS_ALL),
                                            ("fm_kernel.widgets", WIDGETS_ALL)])
def test_subpackage_faces_are_pinned(module: str, pinned: list[str]) -> None:
    mod = __import__(module, fromlist=["__all__"])
    assert sorted(mod.__all__) == sorted(pinned)
    missing = [name for name in pinned if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ lists names it does not define: {missing}"


def test_import_fm_kernel_loads_only_the_error_tree() -> None:
    code = "import json, sys, fm_kernel; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    loaded = json.loads(out)
    heavy = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in NOT_AT_IMPORT)]
    assert not heavy, f"`import fm_kernel` loads {heavy}; load them on first use instead"
    ours = sorted(m for m in loaded if m == "fm_kernel" or m.startswith("fm_kernel."))
    assert ours == ["fm_kernel", "fm_kernel.errors"], ours
