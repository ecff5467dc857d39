"""Chunk files written and read on worker threads.

A large capture spends its time in three places: hashing (xxhash holds the
GIL), copying the bytes into the page cache, and waiting for the disk. Here
the copy and the wait leave the kernel's thread: chunk files are written by a
small pool of threads (``write(2)``/``read(2)`` release the GIL), so they
overlap the hashing the capture does meanwhile on its own thread. Reads fill
the destination buffer in place, from several threads.

Whole 4 KiB-multiple chunks go around the page cache (``O_DIRECT``, through
a per-thread aligned buffer; reads straight into the aligned destination):
a 1 GiB capture then costs the disk's time and evicts nothing, where
buffered writes first had to find 1 GiB of page-cache memory — on the VM of
docs/benchmarks.md, memory touched for the first time costs 0.3–4 s a GiB,
and the buffered capture measured 3.3x the disk's write+fsync against 0.8x
direct. The price: a rewind that loads the array anew soon after reads from
the disk, not the cache (1.3x reading the bytes from the cache, against
0.96x buffered); a rewind after an edit mostly patches the live array
instead and reads only the chunks that differ (state/patching.py).
``FM_DIRECT_IO=0`` writes through the page cache instead, each file's
writeback started as soon as it is written (``sync_file_range(WRITE)``) so
the cell's one ``syncfs`` mostly finds it done. Unaligned lengths and file
systems that refuse ``O_DIRECT`` (EINVAL) use buffered calls. Durability is
the same either way: the caller's one ``syncfs`` per cell makes the files,
their names and the device's cache durable (objects.py ``sync``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger(__name__)

ALIGN = 4096          # O_DIRECT wants address, length and offset in these units
BOUNCE = 2 << 20      # per-thread aligned buffer a direct write copies through
WORKERS = 8           # IO waits, not CPU: direct reads of 2 MiB gain ~10% from 4 to 8
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class ChunkIO:
    """The worker pool and the direct-IO switch of one objects folder."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self.direct = bool(_O_DIRECT) and os.environ.get("FM_DIRECT_IO", "1") != "0"

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="fm-objects")
        return self._pool.submit(fn, *args)

    # -- writing ---------------------------------------------------------------
    def write_fd(self, fd: int, data: memoryview, writeback: bool = False) -> None:
        """Write all of ``data`` to the new file ``fd``; ``writeback``: start
        writing it to the disk now (it is synced later)."""
        data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        n = data.nbytes
        if self.direct and n and n % ALIGN == 0 and self._set_direct(fd, True):
            try:
                self._write_direct(fd, data)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise  # a full disk is a failed write, not a reason to stop writing direct
                # a file system that takes the flag, then refuses the write
                log.info("direct writes off for object files: %s", e)
                self.direct = False
                self._set_direct(fd, False)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, data)
        if writeback:
            _start_writeback(fd)

    def _set_direct(self, fd: int, on: bool) -> bool:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
        except OSError as e:
            if on:
                log.info("direct writes off for object files: %s", e)
                self.direct = False
            return False
        return True

    def _bounce(self) -> mmap.mmap:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = mmap.mmap(-1, BOUNCE)  # page-aligned
        return buf

    def _write_direct(self, fd: int, data: memoryview) -> None:
        buf = self._bounce()
        bmv = memoryview(buf)
        for off in range(0, data.nbytes, BOUNCE):
            piece = data[off:off + BOUNCE]
            n = piece.nbytes
            _copy(bmv[:n], piece)
            _write_all(fd, bmv[:n])
        bmv.release()

    # -- reading ---------------------------------------------------------------
    def read_file(self, path: os.PathLike | str, out: memoryview) -> int:
        """Read the file at ``path`` into ``out``; its length (which may
        differ from ``len(out)``: the caller checks). Direct when ``out`` is
        aligned and the file's length is ``len(out)``."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            n = out.nbytes
            if size != n:
                return size
            if self.direct and n and n % ALIGN == 0 and _address(out) % ALIGN == 0 \
                    and self._set_direct(fd, True):
                try:
                    _read_all(fd, out)
                    return n
                except OSError:
                    self._set_direct(fd, False)
                    os.lseek(fd, 0, os.SEEK_SET)
            _read_all(fd, out)
            return n
        finally:
            os.close(fd)


class Anonymous(mmap.mmap):
    """An anonymous mapping made here: process memory, no file behind it (a
    patch may write into an array on it; never into a user's mapped file)."""


def aligned_buffer(n: int) -> Any:
    """Uninitialised, writable, page-aligned memory of ``n`` bytes (an anonymous
    mapping: a zero-filled bytearray touches every page twice, and an aligned
    destination lets chunks be read into it directly)."""
    return Anonymous(-1, n) if n else bytearray()


def _copy(dst: memoryview, src: memoryview) -> None:
    try:
        import numpy as np
    except ImportError:
        dst[:] = src
        return
    # numpy copies without the GIL; a memoryview assignment holds it
    np.copyto(np.frombuffer(dst, np.uint8), np.frombuffer(src, np.uint8))


def _write_all(fd: int, data: memoryview) -> None:
    off, n = 0, data.nbytes
    while off < n:
        off += os.write(fd, data[off:])


def _read_all(fd: int, out: memoryview) -> None:
    off, n = 0, out.nbytes
    while off < n:
        got = os.readv(fd, [out[off:]])
        if got == 0:
            raise OSError(f"file shorter than its recorded {n} bytes")
        off += got


def _start_writeback(fd: int) -> None:
    fn = getattr(libc(), "sync_file_range", None)
    if fn is not None:
        fn(fd, ctypes.c_int64(0), ctypes.c_int64(0), ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


_SYNC_FILE_RANGE_WRITE = 2
_LIBC: list[Any] = []


def libc() -> Any:
    """The C library (for syncfs and sync_file_range), or None."""
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _address(mv: memoryview) -> int:
    if mv.readonly:
        return 1  # never direct: only our own writable buffers are read into
    return ctypes.addressof(ctypes.c_char.from_buffer(mv))
