"""Restoring a large array by patching the live one: only the chunks that differ.

A rewind to before an edit of a large array would otherwise read every chunk
of it into new memory: on the VM of docs/benchmarks.md, memory touched for
the first time costs 0.3–4 s a GiB, more than reading the bytes. When the
name is bound to an array nothing else can see, the live array's own memory
is the destination instead: every chunk of it is hashed (xxh3, memory speed),
a chunk whose hash is the target's key already holds the target's bytes, and
only the others are read from the store, verified, and copied in.

Safe only when no one else can observe the change, so a patch is planned only
for an array that is exactly ``numpy.ndarray``, writable, without object
dtype, alone in its stored group, large (``PATCH_MIN``), whose memory no other
Python object references: the array is referenced by the namespace alone and
each array or buffer object under it (``.base``) by the one above it alone
(a view, a memoryview, an ``Out[n]`` entry, a list holding it: all show in a
reference count; then the rewind loads a new array as before), and the memory
is the process's own: numpy's, a ``bytearray``, or a mapping a restore made
(never a mapped file, which the patch would rewrite, nor a library's). The
stream of the live array (dtype, shape, order) must equal the target's, so
the result is the very array a load would give, with the same fingerprint.

Atomicity is the restore's: the differing chunks are read and verified into
a scratch buffer while nothing changes; they are copied in only when the
namespace changes (``Patch.apply`` from ``Restore._apply``).
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..record.chunkio import Anonymous
from ..record.objects import chunk_keys
from .pickling import loaded_numpy

if TYPE_CHECKING:
    from ..record.objects import ObjectFiles
    from .snapshot import Snapshotter

PATCH_MIN = 16 * 1024 * 1024  # smaller arrays load as fast as they hash: not worth a patch
WORTH = 0.5  # patch when at most this share of the chunks must be read


@dataclass
class Patch:
    """Make the live array ``ns[name]`` hold a stored group's one buffer."""

    name: str
    obj: Any                       # the live array, patched in place
    raw: memoryview                # its memory, as bytes
    todo: list[tuple[int, str, int]]  # (offset, key, length) of the chunks to read
    nbytes: int                    # the array's bytes in all
    scratch: Any = field(default=None, repr=False)

    @property
    def reading(self) -> int:
        return sum(n for _, _, n in self.todo)

    def read(self, objects: ObjectFiles, tick: Callable[[int], None]) -> None:
        """Read and verify the differing chunks (nothing live changes yet)."""
        self.scratch = objects.read_chunks([(k, n) for _, k, n in self.todo], tick) \
            if self.todo else bytearray()

    def discard(self) -> None:
        """The read failed: the live array stays as it is."""
        self.raw.release()
        self.scratch = None

    def apply(self) -> None:
        """Copy the verified chunks into the live array (cannot fail)."""
        np = loaded_numpy()
        src, pos = memoryview(self.scratch), 0
        for off, _, n in self.todo:
            np.copyto(np.frombuffer(self.raw[off:off + n], np.uint8),
                      np.frombuffer(src[pos:pos + n], np.uint8))
            pos += n
        src.release()
        self.raw.release()
        self.scratch = None


def plan(snap: Snapshotter, ns: dict, header: dict, hint: dict | None) -> Patch | None:
    """A patch making the array bound to the group's one name hold the
    group ``header``, or None when a patch is not safe or not worth it.
    ``hint``: the header of the group the live state says the name holds,
    to skip hashing an array a cell replaced or rewrote (its chunks differ)."""
    names, buffers = header.get("names"), header.get("buffers")
    if not isinstance(names, list) or len(names) != 1 or not isinstance(buffers, list) \
            or len(buffers) != 1:
        return None
    n = names[0]
    keys = [(k, int(ln)) for k, ln in buffers[0]]
    if not _patchable(ns, n, sum(ln for _, ln in keys)):
        return None
    if hint is not None and len(hint.get("buffers") or ()) == 1:
        old = [(k, int(ln)) for k, ln in hint["buffers"][0]]
        if len(old) == len(keys) and sum(a != b for a, b in zip(old, keys)) > WORTH * len(keys):
            return None
    obj = ns[n]
    raw = pickle.PickleBuffer(obj).raw()
    main = snap.main_stream(obj, ns)
    if main is None or [(k, int(ln)) for k, ln in header.get("main") or ()] != \
            chunk_keys(memoryview(main), snap.chunk_size, content_defined=True):
        raw.release()
        return None  # another dtype, shape or order: a load makes the right array
    now = chunk_keys(raw, snap.chunk_size)
    if [ln for _, ln in now] != [ln for _, ln in keys]:
        raw.release()
        return None
    todo, off = [], 0
    for (have, ln), (want, _) in zip(now, keys):
        if have != want:
            todo.append((off, want, ln))
        off += ln
    if len(todo) > WORTH * len(keys):
        raw.release()
        return None
    return Patch(n, obj, raw, todo, raw.nbytes)


def _patchable(ns: dict, n: str, nbytes: int) -> bool:
    """Whether ``ns[n]`` is a large plain writable array whose memory only it reaches."""
    np = loaded_numpy()
    if np is None or n not in ns or type(ns[n]) is not np.ndarray:
        return False
    a = ns[n]
    if a.dtype.hasobject or not a.flags.writeable or a.nbytes != nbytes or nbytes < PATCH_MIN \
            or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return False
    del a
    if _holders(ns[n]) != 1:  # the namespace: nothing else may hold it
        return False
    # A loaded array sits on a chain: array -> array -> memoryview -> mmap.
    under: Any = ns[n].base
    while under is not None:
        if _holders(under) != 2:  # the object above it, and ``under`` here
            return False
        if isinstance(under, np.ndarray):
            under = under.base
        elif isinstance(under, memoryview):
            under = under.obj
        else:
            return isinstance(under, (bytearray, Anonymous))
    return ns[n].flags.owndata  # no base, not its own memory: a C library's


def _raw_count(x: Any) -> int:
    return sys.getrefcount(x)


# What a call of _raw_count adds to the count by itself (its argument, and
# the interpreter's own reference to it, which may be borrowed or not from
# one Python version to the next): measured here rather than assumed.
_SELF = _raw_count(object())


def _holders(x: Any) -> int:
    """References to ``x`` held outside this call."""
    return _raw_count(x) - _SELF - 1  # -1: ``x`` of this function's frame
