"""A papermill engine that tells the kernel which notebook it runs:
``papermill -k flowmetal --engine flowmetal in.ipynb out.ipynb`` records to
``<in's folder>/.flowmetal/in.ipynb.duckdb``, the history `fm run in.ipynb`
and JupyterLab use for the same notebook. Everything else is papermill's own
nbclient engine. Registered through the ``papermill.engine`` entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbclient.util import run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args


def notebook_env(input_path: Any) -> dict[str, str]:
    """FM_NOTEBOOK for a local input notebook; nothing for a URL or a stream
    (then the kernel records to a history of its own session)."""
    if not isinstance(input_path, (str, os.PathLike)) or "://" in str(input_path):
        return {}
    path = Path(input_path).expanduser()
    return {"FM_NOTEBOOK": str(path.absolute())} if path.suffix == ".ipynb" else {}


class _Client(PapermillNotebookClient):
    fm_env: dict[str, str] = {}

    async def async_start_new_kernel(self, **kwargs: Any) -> None:
        if self.fm_env:
            env = dict(kwargs.get("env") or os.environ)
            if not env.get("FM_HISTORY"):  # an explicit history still wins
                env.update(self.fm_env)
            kwargs["env"] = env
        await super().async_start_new_kernel(**kwargs)

    # nbclient binds the sync name to its own coroutine; papermill calls that one
    start_new_kernel = run_sync(async_start_new_kernel)


class FlowmetalEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, log_output: bool = False,
                                 stdout_file: Any = None, stderr_file: Any = None,
                                 start_timeout: int = 60, execution_timeout: Any = None,
                                 **kwargs: Any) -> Any:
        env = notebook_env(kwargs.get("input_path"))
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout, kernel_name=kernel_name, log=logger,
            log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
        client = _Client(nb_man, **final_kwargs)
        client.fm_env = env
        return client.execute()
