"""Flowmetal kernel: every notebook cell a durable step in DuckDB.

    import fm_kernel as fm
    fm.history().steps()
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import checkout, fork, history, rewind, undo
from .errors import FlowmetalError, HistoryError, UsageError

__all__ = [
    "FlowmetalError", "HistoryError", "UsageError", "__version__",
    "checkout", "fork", "history", "rewind", "undo",
]
