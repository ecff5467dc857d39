"""Content-addressed object files beside the history database.

Layout: ``<root>/<k[:2]>/<k[2:]>`` where ``k`` is the xxh3-128 hex digest of the
file's bytes.  Nothing outside this folder is referenced and no absolute path is
stored anywhere, so the database and its ``.objects`` folder can move together.

xxh3-128 rather than a cryptographic hash: the same digest is the change
fingerprint of a chunk (snapshot.py hashes every chunk of a candidate buffer on
each cell), so it must run at memory speed.  The hash detects damage, not
tampering: what may be unpickled is decided by trust.py, per history.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from ..errors import CorruptObject

__all__ = ["ObjectFiles", "CorruptObject", "digest", "chunk_keys"]

Chunks = list[tuple[str, int]]  # (key, length) of consecutive pieces of one buffer


def digest(data: bytes | bytearray | memoryview) -> str:
    """The key of ``data``: xxh3-128, 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def chunk_keys(mv: memoryview, chunk_size: int, *, content_defined: bool = False) -> Chunks:
    """Keys of consecutive pieces of ``mv``.

    Fixed boundaries suit buffers edited in place (arrays): an edit dirties
    only the chunks it overlaps, and finding them costs one hash pass.  A
    pickle stream shifts when a value's encoding changes length (``L[5] = -1``
    encodes in 5 bytes where 5 took 2), so for it boundaries are content-defined:
    cut where a rolling hash of the last 64 bytes hits a pattern, and the
    pieces after an insertion realign."""
    mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
    n = mv.nbytes
    if content_defined and n > 2 * chunk_size:
        cuts = _content_cuts(mv, chunk_size)
    else:
        cuts = list(range(chunk_size, n, chunk_size)) + [n]
    keys, start = [], 0
    for end in cuts:
        keys.append((digest(mv[start:end]), end - start))
        start = end
    return keys or [(digest(b""), 0)]


_WINDOW = 64
_BLOCK = 4 * 1024 * 1024


def _content_cuts(mv: memoryview, chunk_size: int) -> list[int]:
    """End offsets of content-defined pieces averaging ``chunk_size / 2``,
    between ``chunk_size / 8`` and ``2 * chunk_size`` long.  Vectorised with
    numpy (a windowed sum of per-byte random values, via cumsum); without
    numpy, fixed boundaries."""
    try:
        import numpy as np
    except ImportError:
        return list(range(chunk_size, mv.nbytes, chunk_size)) + [mv.nbytes]
    global _GEAR
    if _GEAR is None:
        _GEAR = np.random.default_rng(0x5EED).integers(0, 2**32, 256, dtype=np.uint32)
    mask = (1 << max(1, (chunk_size // 2).bit_length() - 1)) - 1
    lo, hi = chunk_size // 8, chunk_size * 2
    data = np.frombuffer(mv, dtype=np.uint8)
    n = len(data)
    found: list[int] = []
    for start in range(0, n, _BLOCK):  # blocks bound the temporary arrays
        s0 = max(0, start - _WINDOW)
        c = np.cumsum(_GEAR[data[s0:start + _BLOCK]], dtype=np.uint32)
        h = c[_WINDOW:] - c[:-_WINDOW]  # sum of the window ending at s0 + i + WINDOW
        hits = np.flatnonzero((h & mask) == 0) + s0 + _WINDOW + 1
        found.extend(int(x) for x in hits if x > start or start == 0)
    cuts, last = [], 0
    for p in found:
        if p - last < lo or p >= n:
            continue
        while p - last > hi:
            last += hi
            cuts.append(last)
        cuts.append(p)
        last = p
    while n - last > hi:
        last += hi
        cuts.append(last)
    if last < n:
        cuts.append(n)
    return cuts


_GEAR = None


class ObjectFiles:
    """Immutable blobs stored once by content.  Safe against torn writes: a file
    appears under its key only after its bytes are complete (temp file +
    ``os.replace``), so a crash leaves at worst an orphan temp file."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        # fsync makes a write survive power loss before the manifest that names
        # it is committed; tests and benchmarks may switch it off.
        self.fsync = fsync
        # Made on the first write, not here: a read (``fm sql``) creates nothing.
        self._root_made = False
        # Keys known present: saves a stat per chunk when a big buffer is
        # re-checked every cell.  Objects are never deleted behind our back
        # except by corruption, which get() detects.
        self._known: set[str] = set()

    # -- paths -----------------------------------------------------------
    def path(self, key: str) -> Path:
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not an object key: {key!r}")
        return self.root / key[:2] / key[2:]

    # -- writing ---------------------------------------------------------
    def put(self, data: bytes | bytearray | memoryview, key: str | None = None) -> str:
        """Store ``data``; return its key.  ``key`` may be passed when the
        caller already hashed the bytes (it must be ``digest(data)``)."""
        if key is None:
            key = digest(data)
        if not self.has(key):
            self._write(key, data)
        return key

    def put_new(self, data: bytes | bytearray | memoryview, key: str | None = None) -> tuple[str, int]:
        """Like ``put`` but also return how many bytes were written (0 if present)."""
        if key is None:
            key = digest(data)
        if self.has(key):
            return key, 0
        self._write(key, data)
        return key, memoryview(data).nbytes

    def put_chunks(self, mv: memoryview, keys: Chunks) -> int:
        """Write the pieces of ``mv`` not yet stored; return bytes written."""
        written = off = 0
        for key, n in keys:
            if not self.has(key):
                written += self.put_new(mv[off:off + n], key)[1]
            off += n
        return written

    def _write(self, key: str, data: bytes | bytearray | memoryview) -> None:
        target = self.path(key)
        if not self._root_made:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._root_made = True
        target.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._known.add(key)

    # -- reading ---------------------------------------------------------
    def has(self, key: str) -> bool:
        if key in self._known:
            return True
        if self.path(key).is_file():
            self._known.add(key)
            return True
        return False

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def get(self, key: str) -> bytes:
        """The bytes under ``key``, verified against the key."""
        p = self.path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            self._known.discard(key)
            raise CorruptObject(key, p, "missing") from None
        if digest(data) != key:
            raise CorruptObject(key, p, "corrupt (its content does not match its hash)")
        return data

    def read_into(self, key: str, out: memoryview) -> int:
        """Read the object into ``out`` (no intermediate copy), verify it, and
        return its length.  Used to reassemble big buffers chunk by chunk."""
        p = self.path(key)
        try:
            with open(p, "rb") as f:
                n = f.readinto(out)
                extra = f.read(1)
        except FileNotFoundError:
            self._known.discard(key)
            raise CorruptObject(key, p, "missing") from None
        if extra or digest(out[:n]) != key:
            raise CorruptObject(key, p, "corrupt (its content does not match its hash)")
        return n

    def read_chunks(self, keys: Chunks, progress: Callable[[int], None] | None = None) -> Any:
        """Reassemble a buffer, writable (numpy arrays rebuilt on it must be).
        Large ones go into uninitialised memory: a zero-filled bytearray
        touches every page twice, ~0.7 s of a 1 GiB restore."""
        total = sum(n for _, n in keys)
        out = _uninitialised(total) if total >= (1 << 20) else bytearray(total)
        mv = memoryview(out)
        off = 0
        for key, n in keys:
            self.read_into(key, mv[off:off + n])
            off += n
            if progress is not None:
                progress(n)
        return out

    def total_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(".tmp-"):
                    total += os.path.getsize(os.path.join(dirpath, name))
        return total


def _uninitialised(n: int) -> Any:
    try:
        import numpy as np
    except ImportError:
        return bytearray(n)
    return np.empty(n, dtype=np.uint8)
