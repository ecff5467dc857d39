"""Pickle compatibility only: namespace states recorded while flows lived
in this module name these objects by it (``fm_kernel.flows.core.Step``…), so
they must stay importable here. New code imports from the modules they
live in now.
"""

from __future__ import annotations

from .run import Run, run_handle
from .runs import Flow, restore_flow
from .steps import Step

_restore_flow = restore_flow
_run_handle = run_handle

__all__ = ["Flow", "Run", "Step"]
