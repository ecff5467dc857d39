"""The comparison rule of the public-notebook suite: a process-independent
fingerprint of each name's value, computed the same way in the standard
kernel (the reference) and in the flowmetal kernel after every HEAD move.

Loaded inside both kernels (their PYTHONPATH holds this folder) and called
from a silent request's user_expressions, so it is never a cell and never a
step. The rule, in order (first match wins):

1. scalars (None, bool, int, float, complex, str, bytes): type and repr;
2. numpy arrays: dtype, shape and a SHA-1 of the bytes (object arrays: each
   element by this rule); numpy scalars: dtype and repr;
3. pandas Index/Series/DataFrame: type, names, dtypes, index and each
   column's values by this rule (never pickle bytes: block layout after an
   unpickle may differ while the values are the same);
4. list, tuple, dict (in order), set and frozenset (items sorted by their
   fingerprints): the type and items by this rule;
5. modules by name; classes by module and qualified name; functions by
   qualified name, code (bytecode, constants, names) and defaults; builtins
   and method descriptors by qualified name;
6. generators: state (created/suspended/closed), the frame's last
   instruction and its locals by this rule;
7. anything else: what it pickles to, walked, not serialised: the reduce
   callable's name, its arguments and its state by this rule (an instance of
   a plain class is its class and its ``__dict__``);
8. an object that refuses ``__reduce_ex__`` and has no ``__dict__``: only its
   type can be seen; it is "opaque", and a comparison of it proves nothing
   (reported as its own column, never counted as exact).

Cycles are written as a back reference; a value past 200,000 nodes is
"too large" (also opaque). Two values are equal under the rule when their
fingerprints are equal.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from typing import Any

SKIP = {"In", "Out", "exit", "quit", "get_ipython"}
SCALARS = (type(None), bool, int, float, complex, str, bytes)
BUDGET = 200_000


class _Opaque(Exception):
    pass


class _Walk:
    def __init__(self) -> None:
        self.nodes = 0
        self.stack: list[int] = []
        self.opaque = False

    def __call__(self, v: Any) -> Any:
        self.nodes += 1
        if self.nodes > BUDGET:
            raise _Opaque("too large")
        if isinstance(v, SCALARS):
            return (type(v).__name__, repr(v))
        if id(v) in self.stack:
            return ("cycle", len(self.stack) - self.stack.index(id(v)))
        self.stack.append(id(v))
        try:
            return self.compound(v)
        finally:
            self.stack.pop()

    def compound(self, v: Any) -> Any:
        for rule in (self.numeric, self.pandas, self.container, self.code, self.generator):
            got = rule(v)
            if got is not None:
                return got
        return self.reduced(v)

    def numeric(self, v: Any) -> Any:
        np = _module("numpy")
        if np is None:
            return None
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                return ("ndarray", v.dtype.str, v.shape, [self(x) for x in v.ravel().tolist()])
            data = hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()
            return ("ndarray", str(v.dtype), v.shape, data)
        if isinstance(v, np.generic):
            return ("npscalar", str(v.dtype), repr(v))
        return None

    def pandas(self, v: Any) -> Any:
        pd = _module("pandas")
        if pd is None:
            return None
        if isinstance(v, pd.Index):
            return (type(v).__name__, list(v.names), str(v.dtype), self(v.to_numpy()))
        if isinstance(v, pd.Series):
            return ("Series", repr(v.name), str(v.dtype), self(v.index), self(v.to_numpy()))
        if isinstance(v, pd.DataFrame):
            cols = [self(v.iloc[:, i].to_numpy()) for i in range(v.shape[1])]
            return ("DataFrame", self(v.columns), self(v.index),
                    [str(t) for t in v.dtypes], cols)
        return None

    def container(self, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, [self(x) for x in v])
        if isinstance(v, dict):
            return (type(v).__name__, [(self(k), self(x)) for k, x in v.items()])
        if isinstance(v, (set, frozenset)):
            return (type(v).__name__, sorted(repr(self(x)) for x in v))
        return None

    def code(self, v: Any) -> Any:
        if isinstance(v, types.ModuleType):
            return ("module", v.__name__)
        if isinstance(v, type):
            return ("class", v.__module__, v.__qualname__)
        if isinstance(v, types.FunctionType):
            return ("function", v.__qualname__, self(v.__code__), self(v.__defaults__))
        if isinstance(v, types.CodeType):
            return ("code", v.co_code.hex(), [self(c) for c in v.co_consts], list(v.co_names))
        if isinstance(v, types.MethodType):
            return ("method", v.__func__.__qualname__, self(v.__self__))
        if callable(v) and type(v).__name__ in ("builtin_function_or_method", "method_descriptor",
                                                 "wrapper_descriptor", "ufunc", "_ArrayFunctionDispatcher"):
            return ("builtin", getattr(v, "__module__", None), getattr(v, "__qualname__", repr(v)))
        return None

    def generator(self, v: Any) -> Any:
        if not isinstance(v, types.GeneratorType):
            return None
        frame = v.gi_frame
        where = (frame.f_lasti, self(dict(frame.f_locals))) if frame is not None else None
        return ("generator", v.__qualname__, inspect.getgeneratorstate(v), where)

    def reduced(self, v: Any) -> Any:
        try:
            r = v.__reduce_ex__(4)
        except Exception:
            r = None
        if isinstance(r, tuple) and len(r) >= 2:
            fn = getattr(r[0], "__qualname__", repr(r[0]))
            return ("reduce", type(v).__qualname__, fn, [self(p) for p in r[1:3]])
        if hasattr(v, "__dict__"):
            return ("object", type(v).__qualname__, self(dict(vars(v))))
        raise _Opaque(f"no state visible for {type(v).__qualname__}")


def _module(name: str) -> Any:
    import sys

    return sys.modules.get(name)


def fingerprint(v: Any) -> str:
    """sha1 of the rule's description of ``v``, or ``opaque:<why>``."""
    try:
        desc = _Walk()(v)
    except _Opaque as e:
        return f"opaque:{type(v).__qualname__}: {e}"
    except RecursionError:
        return f"opaque:{type(v).__qualname__}: too deep"
    return hashlib.sha1(repr(desc).encode()).hexdigest()


def user_names(ns: dict[str, Any]) -> list[str]:
    return sorted(n for n in ns if not n.startswith("_") and n not in SKIP)


def table(ns: dict[str, Any]) -> dict[str, str]:
    """name -> fingerprint for every user name of a namespace."""
    return {n: fingerprint(ns[n]) for n in user_names(ns)}


def table_json(ns: dict[str, Any]) -> str:
    """``table`` as JSON: a user expression's text/plain is then the repr of
    one string, never a pretty-printed dict cut short at 1,000 items."""
    import json

    return json.dumps(table(ns))
