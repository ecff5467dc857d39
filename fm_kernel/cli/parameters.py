"""Notebook parameters as papermill does them: after the cell tagged
`parameters` (or at the top) goes a cell tagged `injected-parameters` that
assigns the values, rendered by papermill's Python conventions, so a
notebook parameterised for papermill runs the same under `fm run`."""

from __future__ import annotations

import ast
import math
from typing import Any

INJECTED_TAG = "injected-parameters"


def parse_value(text: str) -> Any:
    """A -p value: a Python literal if it reads as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def render(value: Any) -> str:
    if value is None or isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render_str(k)}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return render_str(value)


def render_str(value: Any) -> str:
    text = str(value).encode("unicode_escape").decode("utf-8").replace('"', r"\"")
    return f'"{text}"'


def source(params: dict[str, Any]) -> str:
    return "# Parameters\n" + "".join(f"{name} = {render(v)}\n" for name, v in params.items())


def inject(nb: Any, params: dict[str, Any]) -> None:
    """Insert (or replace) the injected-parameters cell in ``nb`` in place."""
    import nbformat

    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    if not params:
        return
    cell = nbformat.v4.new_code_cell(source(params))
    cell.metadata["tags"] = [INJECTED_TAG]
    at = next((i + 1 for i, c in enumerate(nb.cells)
               if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells.insert(at, cell)
