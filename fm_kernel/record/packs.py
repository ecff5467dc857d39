"""Pack files: many small objects appended to one file, made durable by one
sync for all of them.

A loose object file costs a 4 KiB block, an inode, a rename and (before) an
fsync: 5,000 small arrays were 41 MB on disk and 2.8 s a cell. A pack is
``<objects>/packs/<name>.pack``, records ``MAGIC key(16) length(4) data``
appended in order, and ``<name>.idx``, one ``key offset length`` line of 32
bytes per record, so opening reads the small index, not the data.

Each writer appends only to a pack it created itself (never to an old one),
so after kill -9 or a failed write the only damage is a torn tail: an index
entry past the end of the pack, or a record whose bytes do not hash to its
key. Both are ignored and reported (``torn``), never returned as data; reads
verify the hash like loose files do. Records an index is missing (the index
write was torn) are found again by scanning the pack past its indexed end.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import xxhash

MAGIC = b"FMo1"
REC = struct.Struct("<4s16sI")   # magic, key, length; then the data
IDX = struct.Struct("<16sQQ")    # key, offset of the data, length
PACK_LIMIT = 64 * 1024 * 1024    # a writer starts a new pack past this size
FLUSH_AT = 1024 * 1024           # buffered record bytes written in one write(2)

# packs some writer in this process is appending to: their unindexed tail is
# a record being written, not a torn one
_WRITING: set[str] = set()


def _hex(b: bytes) -> str:
    return b.hex()


class Packs:
    def __init__(self, objects_root: Path) -> None:
        self.dir = Path(objects_root) / "packs"
        self.index: dict[str, tuple[str, int, int]] = {}  # key -> (pack name, offset, length)
        self.torn: list[str] = []  # one line per torn tail found while loading
        self._seen: dict[str, int] = {}  # pack name -> index bytes already read
        self._loaded = False
        self._lock = threading.RLock()
        self._w: _Writer | None = None
        self._rfds: dict[str, int] = {}

    # -- index -----------------------------------------------------------------
    def load(self) -> None:
        """Read index entries (and unindexed pack tails) not read yet."""
        with self._lock:
            self._loaded = True
            try:
                names = sorted(p[:-5] for p in os.listdir(self.dir) if p.endswith(".pack"))
            except FileNotFoundError:
                return
            for name in names:
                self._load_pack(name)

    def _load_pack(self, name: str) -> None:
        pack, idx = self.dir / f"{name}.pack", self.dir / f"{name}.idx"
        try:
            size = pack.stat().st_size
            with open(idx, "rb") as f:
                f.seek(self._seen.get(name, 0))
                raw = f.read()
        except FileNotFoundError:
            raw, size = b"", (pack.stat().st_size if pack.exists() else 0)
        whole = len(raw) - len(raw) % IDX.size
        end = 0
        for i in range(0, whole, IDX.size):
            key, off, n = IDX.unpack_from(raw, i)
            if off + n > size:
                break  # the pack's tail never made it to disk
            self.index.setdefault(_hex(key), (name, off, n))
            end = max(end, off + n)
        self._seen[name] = self._seen.get(name, 0) + whole
        if name in _WRITING or end >= size:
            return
        for key, off, n, ok in scan(pack, start=end):
            if not ok:
                self.torn.append(f"{pack.name}: torn tail of {size - off + REC.size} bytes "
                                 f"at offset {off - REC.size} ignored")
                break
            self.index.setdefault(key, (name, off, n))

    def has(self, key: str) -> bool:
        if not self._loaded:
            self.load()
        return key in self.index or (self._w is not None and key in self._w.pending)

    def find(self, key: str) -> tuple[str, int, int] | None:
        """Where ``key`` is, looking again at packs on a miss (another writer)."""
        if not self.has(key):
            self.load()
        return self.index.get(key)

    # -- reading -----------------------------------------------------------------
    def read(self, key: str) -> bytes | None:
        """The record's bytes, unverified (the caller hashes them), or None."""
        with self._lock:
            if self._w is not None and key in self._w.pending:
                self._flush()
            loc = self.find(key)
            if loc is None:
                return None
            name, off, n = loc
            fd = self._rfds.get(name)
            if fd is None:
                try:
                    fd = self._rfds[name] = os.open(self.dir / f"{name}.pack", os.O_RDONLY)
                except FileNotFoundError:
                    self.index.pop(key, None)
                    return None
            return os.pread(fd, n, off)

    # -- writing -----------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if not self._loaded:
                self.load()
            if self._w is None or self._w.size >= PACK_LIMIT:
                self._close_writer()
                self._w = _Writer(self.dir)
            self._w.add(key, data)
            if self._w.buffered >= FLUSH_AT:
                self._flush()

    def _flush(self) -> None:
        w = self._w
        assert w is not None
        try:
            done = w.flush()
        except OSError:
            self._abandon()
            raise
        self.index.update(done)

    def flush(self) -> None:
        """Everything put so far is written (in the page cache: safe from kill -9)."""
        with self._lock:
            if self._w is not None:
                self._flush()

    def sync(self) -> None:
        """Everything put so far is on disk once this returns."""
        with self._lock:
            if self._w is None:
                return
            self._flush()
            try:
                self._w.sync()
            except OSError:
                self._abandon()
                raise

    def _abandon(self) -> None:
        """After a failed write the pack's tail is unknown: forget what it
        added since its last sync and never append to it again."""
        w = self._w
        if w is None:
            return
        for key in w.unsynced:
            if self.index.get(key, ("",))[0] == w.name:
                del self.index[key]
        w.pending.clear()
        self._close_writer()

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()
            self._seen[self._w.name] = self._w.idx_bytes
            self._w = None

    def close(self) -> None:
        with self._lock:
            if self._w is not None:
                try:
                    self._flush()
                except OSError:
                    pass
            self._close_writer()
            for fd in self._rfds.values():
                os.close(fd)
            self._rfds.clear()

    def __del__(self) -> None:
        # a history opened and dropped (fm.history(path) in a loop) must not
        # keep its pack descriptors until the process ends
        try:
            self.close()
        except Exception:
            pass

    def writing(self) -> str | None:
        return self._w.name if self._w is not None else None

    def drop(self, names: set[str]) -> None:
        """Forget packs gc removed or rewrote."""
        with self._lock:
            for key in [k for k, v in self.index.items() if v[0] in names]:
                del self.index[key]
            for name in names:
                self._seen.pop(name, None)
                fd = self._rfds.pop(name, None)
                if fd is not None:
                    os.close(fd)


def scan(pack: Path, start: int = 0) -> Iterator[tuple[str, int, int, bool]]:
    """(key, data offset, length, intact) of each record from ``start``; the
    first record that is cut short or does not hash to its key ends it."""
    with open(pack, "rb") as f:
        f.seek(start)
        off = start
        while True:
            head = f.read(REC.size)
            if not head:
                return
            if len(head) < REC.size:
                yield "", off + REC.size, 0, False
                return
            magic, key, n = REC.unpack(head)
            data = f.read(n) if magic == MAGIC else b""
            ok = magic == MAGIC and len(data) == n and xxhash.xxh3_128_digest(data) == key
            yield _hex(key), off + REC.size, n, ok
            if not ok:
                return
            off += REC.size + n


class _Writer:
    """One pack being appended to by this process."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.name = f"{time.time_ns():x}-{os.getpid()}-{os.urandom(4).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        self.fd = os.open(folder / f"{self.name}.pack", flags, 0o600)
        self.ifd = os.open(folder / f"{self.name}.idx", flags, 0o600)
        self.folder = folder
        _WRITING.add(self.name)
        self.size = self.idx_bytes = 0
        self.buf, self.ibuf = bytearray(), bytearray()
        self.pending: dict[str, bytes] = {}   # put, not yet written
        self.located: dict[str, tuple[str, int, int]] = {}
        self.unsynced: list[str] = []
        self.new_files = True  # the folder entries need a sync too

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def add(self, key: str, data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        off = self.size + len(self.buf) + REC.size
        self.buf += REC.pack(MAGIC, bytes.fromhex(key), len(raw))
        self.buf += raw
        self.ibuf += IDX.pack(bytes.fromhex(key), off, len(raw))
        self.pending[key] = raw
        self.located[key] = (self.name, off, len(raw))

    def flush(self) -> dict[str, tuple[str, int, int]]:
        if self.buf:
            _write_all(self.fd, self.buf)  # data first: an index entry never outruns it
            _write_all(self.ifd, self.ibuf)
            self.size += len(self.buf)
            self.idx_bytes += len(self.ibuf)
            self.buf, self.ibuf = bytearray(), bytearray()
        done, self.located = self.located, {}
        self.unsynced.extend(done)
        self.pending.clear()
        return done

    def sync(self) -> None:
        os.fdatasync(self.fd)
        os.fdatasync(self.ifd)
        if self.new_files:
            dfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self.new_files = False
        self.unsynced = []

    def close(self) -> None:
        _WRITING.discard(self.name)
        for fd in (self.fd, self.ifd):
            try:
                os.close(fd)
            except OSError:
                pass


def _write_all(fd: int, data: bytearray) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv):]
