"""Installing the `flowmetal` kernelspec somewhere other than the
environment pip installed into (which gets it from the wheel's shared data)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "flowmetal"
DISPLAY_NAME = "Flowmetal (Python 3)"


def kernel_json(python: str | None = None) -> dict:
    return {
        "argv": [python or sys.executable, "-m", "fm_kernel", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False},
    }


def install(user: bool = False, prefix: str | None = None) -> str:
    """Install the kernelspec; returns the folder it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    rel = Path("share") / "jupyter" / "kernels" / KERNEL_NAME
    logos = [p for base in (Path(__file__).resolve().parent.parent, Path(sys.prefix))
             for p in (base / rel).glob("logo-*.png")]
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = Path(tmp) / KERNEL_NAME
        spec_dir.mkdir()
        # An installed spec names this interpreter: the kernel must start with
        # the packages of the environment that ran `fm install`.
        (spec_dir / "kernel.json").write_text(json.dumps(kernel_json(), indent=1))
        for logo in logos:
            (spec_dir / logo.name).write_bytes(logo.read_bytes())
        return KernelSpecManager().install_kernel_spec(
            str(spec_dir), KERNEL_NAME, user=user, prefix=prefix
        )
