"""Pickling namespace objects for the snapshot store: cloudpickle for
notebook code, out-of-band buffers for chunking, functions rebound to the
live namespace on load."""

from __future__ import annotations

import builtins
import contextvars
import copyreg
import io
import pickle
import sys
import types
from dataclasses import dataclass
from typing import Any

import cloudpickle



INBAND_MAX = 64 * 1024  # buffers under this are pickled in the stream, not chunked apart

# Functions restored from the store get this dict as __globals__ (the live ns
# during restore), so a restored ``def f(): data['k'] = 1`` mutates the
# namespace's ``data`` rather than a private copy.
LOAD_GLOBALS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("LOAD_GLOBALS", default=None)


# --------------------------------------------------------------------------
# Pickling
# --------------------------------------------------------------------------
def _make_function(code: types.CodeType, name: str, ncells: int) -> types.FunctionType:
    g = LOAD_GLOBALS.get()
    if g is None:  # read-only inspection: a private module namespace
        g = {"__name__": "__main__", "__builtins__": builtins}
    closure = tuple(types.CellType() for _ in range(ncells)) if ncells else None
    return types.FunctionType(code, g, name, None, closure)


def loaded_numpy() -> Any:
    """numpy if it is imported *completely*, else None. Another thread (a
    flow run, a library's background import) may be importing it right now:
    ``sys.modules`` then holds a partial module with no ``ndarray`` yet, and
    no array of it can exist in the namespace."""
    np = sys.modules.get("numpy")
    if np is None or getattr(getattr(np, "__spec__", None), "_initializing", False):
        return None
    return np if hasattr(np, "ndarray") else None


def array_roots(arrays: list[Any]) -> dict[int, Any]:
    """Map each memory owner to the array that spans it.  numpy collapses view
    chains to the first non-array owner, so a restored array (whose base is
    the bytearray it was rebuilt on) and its views share ``.base``: the
    widest array over that base is the one to pickle by value."""
    np = loaded_numpy()
    roots: dict[int, Any] = {}
    for a in arrays:
        if a.base is None:
            roots[id(a)] = a
        elif not isinstance(a.base, np.ndarray) and a.flags.contiguous:
            cur = roots.get(id(a.base))
            if cur is None or (cur.base is not None and a.nbytes > cur.nbytes):
                roots[id(a.base)] = a
    return roots


def _rebuild_view(base: Any, dtype: Any, shape: tuple, strides: tuple, offset: int) -> Any:
    np = sys.modules["numpy"]
    return np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)


_EMPTY = "__fm_empty_cell__"


def _set_function_state(fn: types.FunctionType, state: tuple) -> None:
    defaults, kwdefaults, cells, fdict, annotations, doc, qualname, module = state
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    for cell, value in zip(fn.__closure__ or (), cells):
        if value is not _EMPTY:
            cell.cell_contents = value
    fn.__dict__.update(fdict or {})
    fn.__annotations__ = annotations
    fn.__doc__, fn.__qualname__, fn.__module__ = doc, qualname, module


def cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY


class SnapshotPickler(cloudpickle.Pickler):
    """cloudpickle, except that functions living in the notebook namespace are
    pickled without their globals (cloudpickle would copy every global they
    name, huge arrays included) and rebound to the namespace on load."""

    def __init__(self, file: io.BytesIO, ns: dict, buffers: list, roots: dict[int, Any]) -> None:
        # Small buffers stay in the stream: out of band, each of 5,000 16-byte
        # arrays was an object of its own; in band they are part of one chunk.
        super().__init__(file, protocol=5,
                         buffer_callback=lambda b: b.raw().nbytes < INBAND_MAX or buffers.append(b))
        self._ns = ns
        # id of a memory owner -> the array pickled here that spans it (see array_roots)
        self._roots = roots
        np = loaded_numpy()
        self._np_type = np.ndarray if np is not None else None

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is self._np_type and obj.base is not None:
            root = self._roots.get(id(obj.base))
            if root is not None and root is not obj and not obj.dtype.hasobject:
                # numpy pickles a view as a copy; rebuild it over the array
                # that owns its memory, so ``v = a[2:5]`` still writes
                # through to ``a`` after a restore.
                off = obj.__array_interface__["data"][0] - root.__array_interface__["data"][0]
                if 0 <= off < root.nbytes:
                    return (_rebuild_view, (root, obj.dtype, obj.shape, obj.strides, off))
        if t is types.FunctionType and obj.__globals__ is self._ns:
            closure = obj.__closure__ or ()
            state = (obj.__defaults__, obj.__kwdefaults__, tuple(cell_value(c) for c in closure),
                     obj.__dict__ or None, obj.__annotations__, obj.__doc__, obj.__qualname__,
                     obj.__module__)
            # 6-tuple with a state setter: the function exists (and is memoised)
            # before its closure is pickled, so self-referencing closures work.
            return (_make_function, (obj.__code__, obj.__name__, len(closure)), state,
                    None, None, _set_function_state)
        if isinstance(obj, type) and obj.__module__ == "__main__" and "__slotnames__" not in obj.__dict__:
            # Pickling the first instance caches __slotnames__ on the class;
            # do it now so the class's fingerprint does not change then.
            try:
                copyreg._slotnames(obj)
            except Exception:
                pass
        if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
            # cloudpickle would read a file's whole content; an open file is
            # process state, not data.
            raise TypeError(f"cannot pickle {qualname(t)}: an open file or stream")
        return super().reducer_override(obj)


def _untracked_class(type_constructor: Any, name: str, bases: tuple, type_kwargs: dict,
                     class_tracker_id: Any, extra: Any) -> type:
    return cloudpickle.cloudpickle._make_skeleton_class(type_constructor, name, bases, type_kwargs,
                                                        None, extra)


class IsolatedUnpickler(pickle.Unpickler):
    """For inspecting a past state.  cloudpickle maps a notebook class to the
    live class of the same origin and then *overwrites its attributes* with the
    pickled ones; an inspection must get a private copy instead."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_make_skeleton_class" and module.startswith("cloudpickle"):
            return _untracked_class
        return super().find_class(module, name)


@dataclass
class Payload:
    """One pickled tuple of objects, chunked and hashed, not yet written."""
    main: bytes
    main_digest: str  # the stream is cut into chunks only if it must be written
    buffers: list[memoryview]
    buffer_keys: list[list[tuple[str, int]]]
    fp: str
    nbytes: int


def qualname(t: type) -> str:
    mod = getattr(t, "__module__", "") or ""
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


