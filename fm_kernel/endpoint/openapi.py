"""``GET /openapi.json``: the endpoint's OpenAPI document, ``openapi.yaml``
beside this module (so an installed wheel has it; ``docs/openapi.yaml`` is
a link to it), served as JSON. It needs no token: it describes the routes
every flowmetal kernel serves and holds nothing of this history; its
``servers`` entry is this endpoint's own URL. tests/unit/test_openapi.py
checks that it lists exactly the routes a kernel serves."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@functools.lru_cache(maxsize=1)
def _parsed() -> dict[str, Any]:
    import yaml  # pyyaml, a dependency; loaded on the first request only

    with DOCUMENT.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document as plain data; with ``server_url``, its servers
    name that URL instead of the templated loopback one."""
    doc = copy.deepcopy(_parsed())
    if server_url:
        doc["servers"] = [{"url": server_url, "description": "this kernel's endpoint"}]
    return doc
