"""Shared fixtures, and the test tiers.

Every test gets exactly one tier marker, assigned here so that no file has to
remember it, and the run is ordered by tier: the in-process tier first (it
fails in seconds), then the real-kernel tests, the fault suite and the
browser tests last.

    unit     in-process: no kernel, no subprocess        tests/unit/, ...
    kernel   starts a real kernel or an `fm` subprocess  most of tests/
    faults   kill points, storage faults, fuzzing        tests/faults/
    browser  JupyterLab in headless Chromium             tests/test_browser.py

`pytest -m unit` runs only the fast tier. The end of a run prints the time
spent in each tier. A file may name its tier itself
(`pytestmark = pytest.mark.unit`); otherwise a file that imports the kernel
driver, jupyter_client or subprocess, or a test that asks for the `kernel`
fixture, is `kernel`, and anything else outside tests/unit/ is `unit`.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from kernel_driver import Kernel  # noqa: E402

TIERS = ("unit", "kernel", "faults", "browser")
# A module that holds one of these (or something defined in them) starts processes.
_PROCESS_MODULES = ("kernel_driver", "subprocess", "jupyter_client", "jupyter_kernel_test",
                    "nbclient", "papermill", "multiprocessing")


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return tmp_path / "hist" / "history.duckdb"


@pytest.fixture
def kernel(history: Path):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        yield k


def _starts_processes(module: types.ModuleType | None) -> bool:
    if module is None:
        return False
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) \
            else getattr(value, "__module__", None)
        if isinstance(name, str) and name.split(".")[0] in _PROCESS_MODULES:
            return True
    return False


def tier_of(item: pytest.Item) -> str:
    """The tier a collected test belongs to (see the module docstring)."""
    named = [m.name for m in item.iter_markers() if m.name in TIERS]
    if named:
        return named[0]
    path = Path(str(item.fspath)).resolve()
    rel = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
    if rel[:1] == ("unit",):
        return "unit"
    if rel[:1] == ("faults",):
        return "faults"
    if rel == ("test_browser.py",):
        return "browser"
    if "kernel" in getattr(item, "fixturenames", ()) or _starts_processes(getattr(item, "module", None)):
        return "kernel"
    return "unit"


# tryfirst: the markers must be on the items before `-m` deselects by them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers = {}
    for item in items:
        tier = tier_of(item)
        tiers[item.nodeid] = TIERS.index(tier)
        if not any(m.name == tier for m in item.iter_markers()):
            item.add_marker(getattr(pytest.mark, tier))
    # Stable: within a tier, files and tests keep their collection order.
    items.sort(key=lambda it: tiers[it.nodeid])


_spent: dict[str, list[float]] = {}  # tier -> [tests, seconds]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = next((t for t in TIERS if t in report.keywords), None)
    if tier is not None:
        entry = _spent.setdefault(tier, [0, 0.0])
        entry[0] += report.when == "call"
        entry[1] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if _spent:
        terminalreporter.write_line("time by tier: " + ", ".join(
            f"{t} {int(_spent[t][0])} tests {_spent[t][1]:.1f} s" for t in TIERS if t in _spent))
