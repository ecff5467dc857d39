"""The OpenAPI document and the routes cannot drift apart: every (method,
path) a kernel's endpoint serves is in fm_kernel/endpoint/openapi.yaml and
every one there is served, the routes that need no token are the ones it
marks so; docs/openapi.yaml is that same file. `fm worker`'s endpoint serves
the kernel's routes and the release of its history (endpoint_routes(worker=True))."""

from __future__ import annotations

import re
from pathlib import Path

import tornado.web

from fm_kernel.endpoint import BUILTIN_ROUTES
from fm_kernel.endpoint.openapi import DOCUMENT, document
from fm_kernel.runtime import endpoint_routes

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "post", "put", "patch", "delete")


def _template(pattern: str) -> str:
    """'/runs/([A-Za-z0-9_\\-]{1,128})/result' -> '/runs/{}/result'."""
    out, depth = [], 0
    for ch in pattern:
        if ch == "(":
            if depth == 0:
                out.append("{}")
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).replace("\\", "")


def _served() -> set[tuple[str, str]]:
    found = set()
    for pattern, handler in (*BUILTIN_ROUTES, *endpoint_routes(worker=True)):
        for m in METHODS:
            if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m):
                found.add((m, _template(pattern)))
    return found


def _documented() -> set[tuple[str, str]]:
    paths = document()["paths"]
    return {(m, re.sub(r"\{[^}]+\}", "{}", path)) for path, ops in paths.items()
            for m in ops if m in METHODS}


def test_the_template_of_a_route_pattern() -> None:
    assert _template(r"/runs/([A-Za-z0-9_\-]{1,128})/signals/([^/]{1,200})") == "/runs/{}/signals/{}"
    assert _template(r"/openapi.json") == "/openapi.json"


def test_every_served_route_is_documented_and_every_documented_one_served() -> None:
    served, documented = _served(), _documented()
    assert ("post", "/events/{}") in served and ("get", "/openapi.json") in served  # the checker sees
    assert not served - documented, f"served but missing from {DOCUMENT.name}: {sorted(served - documented)}"
    assert not documented - served, f"in {DOCUMENT.name} but not served: {sorted(documented - served)}"


def test_the_routes_without_a_token_are_the_ones_documented_so() -> None:
    doc = document()
    open_in_doc = {(m, re.sub(r"\{[^}]+\}", "{}", path)) for path, ops in doc["paths"].items()
                   for m, op in ops.items() if m in METHODS
                   and (op.get("security", doc["security"]) == [] or {} in op.get("security", []))}
    open_served = {(m, _template(p)) for p, h in (*BUILTIN_ROUTES, *endpoint_routes(worker=True))
                   for m in METHODS if not h.needs_token
                   and getattr(h, m) is not getattr(tornado.web.RequestHandler, m)}
    assert open_served == open_in_doc == {("post", "/callbacks/{}"), ("post", "/events/{}"),
                                          ("get", "/openapi.json")}


def test_docs_openapi_yaml_is_the_shipped_file() -> None:
    assert (ROOT / "docs" / "openapi.yaml").resolve() == DOCUMENT.resolve()


def test_the_served_document_names_the_endpoint() -> None:
    doc = document("http://127.0.0.1:9999")
    assert doc["openapi"].startswith("3.") and doc["servers"] == [
        {"url": "http://127.0.0.1:9999", "description": "this kernel's endpoint"}]
    assert document()["servers"][0]["url"] == "http://127.0.0.1:{port}"  # the cache is not changed
