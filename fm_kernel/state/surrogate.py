"""Fingerprints for objects pickle refuses, from the state they expose.

A lock, a hash object or a widget cannot be stored, but a hash object's
digest and a widget's traits are exactly its state, so a change to them can
still be seen. ``state_fingerprint`` returns a digest of that state, or None
when the object shows nothing trustworthy (a lock, an open file, a socket, a
generator): such a name is *not tracked*, and every restore that keeps it
says so. docs/time-travel.md lists the rules and the classes they cover.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ..record.objects import digest
from .pickling import qualname

__all__ = ["state_fingerprint"]

DEPTH = 6          # nesting followed through attributes and containers
NODES = 2_000      # objects visited for one fingerprint
# C modules whose objects are hashlib hashes: the digest of a copy is their state
HASH_MODULES = frozenset({"_hashlib", "_blake2", "_sha1", "_sha2", "_sha256", "_sha512",
                          "_sha3", "_md5"})
WIDGET = "ipywidgets.widgets.widget.Widget"
ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None)})


class _Opaque(Exception):
    """Part of the object exposes no state: the whole cannot be fingerprinted."""


def state_fingerprint(obj: Any, pickled: Callable[[Any], str | None]) -> str | None:
    """A digest of the state ``obj`` exposes, or None if it exposes none.
    ``pickled(value)`` is the content fingerprint of a picklable value (None
    if it does not pickle); parts that do not pickle are looked into in turn."""
    budget = [NODES]
    try:
        return digest(repr(_state(obj, pickled, 0, {}, budget)).encode())
    except (_Opaque, RecursionError):
        return None


def _state(obj: Any, pickled: Callable[[Any], str | None], depth: int, seen: dict[int, int],
           budget: list[int]) -> Any:
    if depth > DEPTH or budget[0] <= 0:
        raise _Opaque
    budget[0] -= 1
    if type(obj) in ATOMS:
        return ("a", repr(obj))
    if id(obj) in seen:
        return ("ref", seen[id(obj)])  # a cycle or a shared part: its position is its state
    seen[id(obj)] = len(seen)
    t = type(obj)

    def inner(v: Any) -> Any:
        return _state(v, pickled, depth + 1, seen, budget)

    if t.__module__ in HASH_MODULES and hasattr(obj, "copy") and hasattr(obj, "digest"):
        copy = obj.copy()  # digest() of the object itself is fine too; a copy is never finalised
        try:
            value = copy.digest()
        except TypeError:  # shake_128/256 want a length
            value = copy.digest(64)
        return ("hash", obj.name, value)
    if any(qualname(c) == WIDGET for c in t.__mro__):
        return ("widget", qualname(t), _widget_state(obj, inner))
    # Widgets first: pickling one tries (and fails) to pickle its comm and kernel.
    fp = pickled(obj) if depth else None  # the top object is known not to pickle
    if fp is not None:
        return ("p", fp)
    if t in (list, tuple):
        return (t.__name__, [inner(v) for v in obj])
    if t is dict:
        return ("dict", [(inner(k), inner(v)) for k, v in obj.items()])
    if t in (set, frozenset):
        return (t.__name__, sorted(repr(inner(v)) for v in obj))
    if _pure_python(t):
        try:
            state = obj.__getstate__()
        except Exception as exc:  # the class refuses to expose its state
            raise _Opaque from exc
        return ("obj", qualname(t), inner(state) if state is not None else None)
    raise _Opaque


def _widget_state(w: Any, inner: Callable[[Any], Any]) -> list:
    """A widget's synced traits. Traits holding other widgets (layout,
    style, children) are serialised as model ids, which differ in every
    kernel: their own traits stand in for them."""
    state = w.get_state()
    out = []
    for key in sorted(state):
        live = getattr(w, key, None)
        if type(live) in (list, tuple) or any(qualname(c) == WIDGET for c in type(live).__mro__):
            out.append((key, inner(live)))
        else:
            out.append((key, repr(state[key])))
    return out


def _pure_python(t: type) -> bool:
    """Whether every C type under ``t`` is ``object``: then ``__getstate__``
    (or the instance dict) holds all of the instance's state. A Python class
    over a C base (``socket.socket``) keeps state the dict does not show."""
    if isinstance(t, type) and issubclass(t, io.IOBase):
        return False
    # Classes made by a class statement are mutable; C types, static or from
    # a spec, are immutable (Py_TPFLAGS_IMMUTABLETYPE, Python 3.10+).
    return all(c is object or not c.__flags__ & (1 << 8) for c in t.__mro__)
