"""The ``fm`` command and what only it runs: ``fm run`` (headless), ``fm
worker``, the client for a live kernel's endpoint, the kernelspec installer."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
