"""Requests drawn from the endpoint's own OpenAPI document, for the fuzz
suite: every documented operation, its path parameters filled with ids,
traversal tricks and junk, its query and header parameters sometimes set,
and its JSON body built from the documented schema with values of the
documented type or deliberately not. A route added to the document is
fuzzed from then on without touching the test.

Numbers stay outside the range where a long poll would wait for real
(``wait``/``timeout`` of 1–300 s): the fuzz wants answers, not sleeps."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from hypothesis import strategies as st

from fm_kernel.endpoint.openapi import document

DOC = document()
METHODS = ("get", "post", "put", "delete", "patch")

SEGMENT = st.sampled_from([
    "0" * 32, "abc", "nightly", "..", "%2e%2e", "%2F", "x" * 300, "🙂", "%00", "a;b",
    "run-1", "-", "_", "0",
])
NUMBER = st.sampled_from([-1, 0, 0.01, 0.05, 301, 601, 1e308, "x", None, True, [], {}])
INTEGER = st.sampled_from([-1, 0, 1, 2, 10**20, 1.5, "x", None])
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["0" * 32, "", "x" * 5000]), st.integers())
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def _resolve(schema: Any) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema:
        node: Any = DOC
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema if isinstance(schema, dict) else {}


def _value(schema: Any) -> st.SearchStrategy:
    """A value of the schema's type most of the time, anything else sometimes."""
    schema = _resolve(schema)
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    typed = {"number": NUMBER, "integer": INTEGER, "string": TEXT, "boolean": st.booleans(),
             "array": st.lists(ANY_JSON, max_size=3)}.get(kind)
    if kind == "object":
        typed = _body(schema)
    return st.one_of(typed, ANY_JSON) if typed is not None else ANY_JSON


def _body(schema: dict[str, Any]) -> st.SearchStrategy:
    props = schema.get("properties") or {}
    if not props:
        return ANY_JSON
    return st.fixed_dictionaries({}, optional={k: _value(v) for k, v in props.items()})


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for template, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                ops.append((method.upper(), template, item[method]))
    return ops


OPERATIONS = _operations()
PUBLIC = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/?]+", t) + r"(\?.*)?$")
          for m, t, op in OPERATIONS if op.get("security") == []]


def public(path: str) -> bool:
    """Whether the document lets this path answer without the token."""
    return any(p.match(path) for p in PUBLIC)


def _header(value: Any) -> str:
    """What an HTTP client can send as a header value (no line breaks, latin-1)."""
    text = "".join(c for c in str(value) if c.isprintable())
    return text.encode("latin-1", "replace").decode("latin-1")


@st.composite
def documented(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, path, headers, body) of one documented operation, filled in."""
    method, template, op = draw(st.sampled_from(OPERATIONS))
    if draw(st.integers(0, 9)) == 0:  # now and then the wrong verb
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    params = [_resolve(p) for p in op.get("parameters", [])]
    path = template
    for p in params:
        if p.get("in") == "path":
            path = path.replace("{%s}" % p["name"], draw(SEGMENT))
    query = {p["name"]: draw(_value(p.get("schema"))) for p in params
             if p.get("in") == "query" and draw(st.booleans())}
    if query:
        path += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
    headers = {p["name"]: _header(draw(TEXT)) for p in params
               if p.get("in") == "header" and draw(st.booleans())}
    body = None
    content = (op.get("requestBody") or {}).get("content", {}).get("application/json")
    if content is not None or draw(st.booleans()):
        value = draw(_body(_resolve((content or {}).get("schema"))))
        body = json.dumps(value).encode()
    return method, path, headers, body
