"""Content-addressed object files beside the history database.

Layout: an object under ``PACKED_MAX`` bytes is a record in a pack file
(packs.py: many small objects, one sync); a larger one is a loose file
``<root>/<k[:2]>/<k[2:]>``, where ``k`` is the xxh3-128 hex digest of its
bytes.  Histories written before packs hold only loose files and read as
before.  Nothing outside this folder is referenced and no absolute path is
stored anywhere, so the database and its ``.objects`` folder can move together.

Durability: with ``defer=True`` (the snapshot store) nothing is synced per
object; ``sync()`` makes everything written since the last one durable with
one pass (the pack's fdatasync, one ``syncfs`` for the loose files), called
once per cell before its record commits.  ``.unsettled`` in the folder says
objects were written that no committed record may name yet: the next open
then looks for orphans (gc.py).

xxh3-128 rather than a cryptographic hash: the same digest is the change
fingerprint of a chunk (snapshot.py hashes every chunk of a candidate buffer on
each cell), so it must run at memory speed.  The hash detects damage, not
tampering: what may be unpickled is decided by trust.py, per history.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import xxhash

from ..errors import CorruptObject
from .chunkio import ChunkIO, aligned_buffer, libc
from .packs import Packs

__all__ = ["ObjectFiles", "CorruptObject", "digest", "chunk_keys", "sync_folder"]

Chunks = list[tuple[str, int]]  # (key, length) of consecutive pieces of one buffer
PACKED_MAX = 128 * 1024  # objects under this go into packs: a loose file costs a 4 KiB block
UNSETTLED = ".unsettled"


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

    def __init__(self, root: Path | str, *, fsync: bool = True, defer: bool = False) -> None:
        self.root = Path(root)
        # fsync makes a write survive power loss before the manifest that names
        # it is committed; tests and benchmarks may switch it off.
        self.fsync = fsync
        self.defer = defer  # True: durable at sync(), not at each put
        # True: sync() leaves the pack in the page cache and sync_packs() makes
        # it durable, called before the batch that names its objects commits
        # into DuckDB (the default mode, whose step log is not synced per record).
        self.packs_later = False
        self.packs = Packs(self.root)
        self._unsynced: list[Path] = []
        self._unsettled = False
        # Made on the first write, not here: a read (``fm sql``) creates nothing.
        self._root_made = False
        # Keys known present: saves a stat per chunk when a big buffer is
        # re-checked every cell.  Objects are never deleted behind our back
        # except by corruption, which get() detects.
        self._known: set[str] = set()
        self.io = ChunkIO()
        # loose chunks being written on the pool: key -> (its write, its length)
        self._pending: dict[str, tuple[Future, int]] = {}

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
        if self._present(key, loose=memoryview(data).nbytes >= PACKED_MAX):
            return key, 0
        self._write(key, data)
        return key, memoryview(data).nbytes

    def stage_chunks(self, mv: memoryview, chunk_size: int) -> Chunks:
        """``chunk_keys(mv, chunk_size)``, and every loose-sized piece not
        stored yet starts being written on the pool as soon as it is hashed:
        the writes overlap the hashing of the rest (xxhash holds the GIL,
        write(2) does not). A piece not stored yet means its group changed, so
        it is written anyway when the group is; a capture that fails after this
        leaves it as an orphan, which ``.unsettled`` makes gc look for."""
        mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        keys, n = [], mv.nbytes
        for start in range(0, n, chunk_size):
            piece = mv[start:start + chunk_size]
            key = digest(piece)
            keys.append((key, piece.nbytes))
            if piece.nbytes >= PACKED_MAX and key not in self._pending and not self.has(key):
                self._start_loose(key, piece)
        return keys or [(digest(b""), 0)]

    def put_chunks(self, mv: memoryview, keys: Chunks) -> int:
        """Write the pieces of ``mv`` not yet stored (large ones in parallel,
        with those ``stage_chunks`` started); return bytes written."""
        mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        written = off = 0
        waits: dict[str, tuple[Future, int]] = {}  # a key twice in one buffer: one write
        for key, n in keys:
            if key in waits:
                pass
            elif key in self._pending:
                waits[key] = self._pending.pop(key)
            elif not self._present(key, loose=n >= PACKED_MAX):
                if n >= PACKED_MAX and self.defer:
                    waits[key] = self._start_loose(key, mv[off:off + n])
                    self._pending.pop(key)
                else:
                    written += self.put_new(mv[off:off + n], key)[1]
            off += n
        return written + _wait_all(list(waits.values()))

    def _prepare(self) -> None:
        if not self._root_made:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._root_made = True
        if self.defer and not self._unsettled:
            (self.root / UNSETTLED).touch(mode=0o600)
            self._unsettled = True

    def _start_loose(self, key: str, data: memoryview) -> tuple[Future, int]:
        self._prepare()
        job = (self.io.submit(self._write_loose, key, data), data.nbytes)
        self._pending[key] = job
        return job

    def _write(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._prepare()
        if memoryview(data).nbytes < PACKED_MAX:
            self.packs.put(key, data)
            # Undeferred writers (the flow journal) name the key in a record
            # right after: the bytes must be written by then, synced or not.
            if not self.defer:
                self.packs.sync() if self.fsync else self.packs.flush()
            self._known.add(key)
            return
        self._write_loose(key, data)

    def _write_loose(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """One loose file (safe on a pool thread): temp file, then its name."""
        target = self.path(key)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            try:
                os.fchmod(fd, 0o600)
                self.io.write_fd(fd, memoryview(data), writeback=self.fsync and self.defer)
                if self.fsync and not self.defer:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            if self.fsync and self.defer:
                self._unsynced.append(target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._known.add(key)

    def sync(self) -> None:
        """Make every object written since the last sync durable: one pass.
        Writes still running on the pool are waited for first (their errors
        raised here: a chunk that failed must fail the capture)."""
        jobs, self._pending = list(self._pending.values()), {}
        _wait_all(jobs)
        if self.packs_later:
            self.packs.flush()  # safe from kill -9; durable by sync_packs()
        else:
            self.packs.sync()  # also writes out buffered records when fsync is off
        files, self._unsynced = self._unsynced, []
        if not self.fsync or not files:
            return
        if len(files) == 1 or not _syncfs(self.root):
            for p in files:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def sync_packs(self) -> None:
        """Make the small objects written so far durable (safe on another thread)."""
        self.packs.sync()

    def abandon(self) -> None:
        """A capture failed: wait for the writes it started and drop their
        errors (it failed already); what they wrote stays unsettled, for gc."""
        jobs, self._pending = list(self._pending.values()), {}
        for job, _ in jobs:
            try:
                job.result()
            except BaseException:
                pass

    def settle(self) -> None:
        """The record naming everything written so far is committed."""
        if self._unsettled:
            try:
                os.unlink(self.root / UNSETTLED)
            except FileNotFoundError:
                pass
            self._unsettled = False

    def forget(self) -> None:
        """gc removed objects: presence must be looked up again."""
        self._known.clear()

    # -- reading ---------------------------------------------------------
    def has(self, key: str) -> bool:
        return self._present(key, loose=True)

    def _present(self, key: str, loose: bool) -> bool:
        """Whether ``key`` is stored; ``loose``: it may be a file of its own.
        A small object is written only to a pack, so a writer asks the packs'
        index alone, with no stat(2) of a file that is not there on the reply
        path (a history from before packs may hold it loose: it is then
        stored again in a pack, its bytes twice, never read wrong)."""
        if key in self._known:
            return True
        if self.packs.has(key) or (loose and self.path(key).is_file()):
            self._known.add(key)
            return True
        return False

    def size(self, key: str) -> int:
        loc = self.packs.find(key) if not self.path(key).is_file() else None
        return loc[2] if loc is not None else self.path(key).stat().st_size

    def _read(self, key: str) -> bytes:
        p = self.path(key)
        data = self.packs.read(key) if self.packs.has(key) else None
        if data is not None and digest(data) == key:
            return data
        try:
            return p.read_bytes()
        except FileNotFoundError:
            pass
        data = self.packs.read(key)  # perhaps another writer's new pack
        if data is None:
            self._known.discard(key)
            raise CorruptObject(key, p, "missing") from None
        return data

    def get(self, key: str) -> bytes:
        """The bytes under ``key``, verified against the key."""
        p = self.path(key)
        data = self._read(key)
        if digest(data) != key:
            raise CorruptObject(key, p, "corrupt (its content does not match its hash)")
        return data

    def read_into(self, key: str, out: memoryview) -> int:
        """Read the object into ``out`` (no intermediate copy), verify it, and
        return its length.  Used to reassemble big buffers chunk by chunk."""
        self._check(key, out, self._fill(key, out))
        return out.nbytes

    def _fill(self, key: str, out: memoryview) -> int:
        """Read the object into ``out`` (safe on a pool thread); its length,
        which the caller compares with ``len(out)`` before trusting it."""
        try:
            return self.io.read_file(self.path(key), out)
        except FileNotFoundError:
            pass
        data = self._read(key)
        if len(data) == out.nbytes:
            out[:] = data
        return len(data)

    def _check(self, key: str, out: memoryview, got: int) -> None:
        if got != out.nbytes:
            raise CorruptObject(key, self.path(key),
                                f"corrupt ({got} bytes where {out.nbytes} were recorded)")
        if digest(out) != key:
            raise CorruptObject(key, self.path(key), "corrupt (its content does not match its hash)")

    def read_chunks(self, keys: Chunks, progress: Callable[[int], None] | None = None) -> Any:
        """Reassemble a buffer, writable (numpy arrays rebuilt on it must be),
        straight into its final place: large ones into uninitialised aligned
        memory, each chunk read there by a pool thread while this thread
        verifies the chunks already read (in order, so a corrupt one is named
        before any later one)."""
        total = sum(n for _, n in keys)
        out = aligned_buffer(total) if total >= (1 << 20) else bytearray(total)
        mv = memoryview(out)
        jobs, off = [], 0
        for key, n in keys:
            piece = mv[off:off + n]
            off += n
            jobs.append((key, piece, self.io.submit(self._fill, key, piece) if len(keys) > 1 else None))
        try:
            for key, piece, job in jobs:
                self._check(key, piece, job.result() if job is not None else self._fill(key, piece))
                if progress is not None:
                    progress(piece.nbytes)
        except BaseException:
            for _, _, job in jobs:  # nothing may still write into ``out`` once we leave
                if job is not None and not job.cancel():
                    try:
                        job.result()
                    except BaseException:
                        pass
            raise
        return out

    def total_bytes(self) -> int:
        """Bytes of every object file and pack (what the history takes on disk)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(".tmp-"):
                    total += os.path.getsize(os.path.join(dirpath, name))
        return total


def sync_folder(root: Path) -> None:
    """Everything written under ``root`` is on disk once this returns."""
    if not _syncfs(root):
        os.sync()


def _syncfs(root: Path) -> bool:
    """One sync of the file system holding ``root`` (Linux); False if unavailable."""
    fn = getattr(libc(), "syncfs", None)
    if fn is None:
        return False
    fd = os.open(root, os.O_RDONLY)
    try:
        return fn(fd) == 0
    finally:
        os.close(fd)


def _wait_all(jobs: list[tuple[Future, int]]) -> int:
    """Wait for every write, then raise the first error: a failed write must
    not leave others running behind the caller's back. Bytes written."""
    first: BaseException | None = None
    written = 0
    for job, n in jobs:
        try:
            job.result()
            written += n
        except BaseException as e:
            first = first or e
    if first is not None:
        raise first
    return written
