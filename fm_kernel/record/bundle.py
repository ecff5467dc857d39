"""Moving a history between machines: a bundle is one tar file holding the
database, its objects folder and a small manifest.

A bundle comes from elsewhere, so importing one trusts nothing in it: the
members are checked one by one (plain files and folders under the three
names a bundle has, nothing else, within a size cap) and written by this
code into a private folder beside the target, never by tarfile; the
history's origin and trust record are dropped, so its objects load only
after ``fm import --trust`` or ``fm trust`` (see trust.py). An export strips
them too: a bundle does not carry this machine's id.

Both directions write under a temporary name of our own
(``.fm-export-<pid>-*``, ``.fm-import-<pid>-*``, a folder 0700) and rename at
the end, so kill -9 leaves no partial bundle or history under the final
name; the next export or import in that folder removes the leftovers of dead
processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import HistoryError, HistoryLocked, UnsafeBundle, UsageError
from ..tables import human_bytes
from .objects import UNSETTLED
from .store import Store
from .trust import machine_id, stamp_origin, trust, untrusted_message  # noqa: F401 (re-exported)
from .trust import gate as _gate

FORMAT = 1
# Default cap on what an import may write: 4x the bundle's own size (a tar of
# DuckDB pages and pickles is not compressed) plus room for small bundles.
SLACK = 64 << 20
_COPY = 1 << 20
_TOP = ("bundle.json", "history.duckdb", "history.duckdb.objects", "history.duckdb.flowlog")
_SIDECARS = (".wal", ".steplog", ".objects", ".flowlog", ".inflight", ".endpoint.json")
EXPORT_PREFIX, IMPORT_PREFIX = ".fm-export-", ".fm-import-"


def ensure_origin(store: Store) -> None:
    """Kept for the runtime's open: stamps only a history this process created."""
    stamp_origin(store)


def is_trusted(store: Store) -> bool:
    return _gate(store).trusted


def _fingerprint(ident: str | None) -> str | None:
    # names the machine in bundle.json without handing out the id trust rests on
    return hashlib.sha256(ident.encode()).hexdigest()[:16] if ident else None


def _private_dir(folder: Path, prefix: str) -> Path:
    _clean_stale(folder)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=folder))


def _clean_stale(folder: Path) -> None:
    """Remove our temp folders left in ``folder`` by processes that died."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if not e.name.startswith((EXPORT_PREFIX, IMPORT_PREFIX)):
            continue
        pid = e.name.split("-")[2] if e.name.count("-") >= 3 else ""
        try:
            st = e.stat(follow_symlinks=False)
            if not e.is_dir(follow_symlinks=False) or st.st_uid != os.getuid() or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            continue


def _open_new(path: Path):
    """A new owner-only file; never an existing one, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


# -- export -----------------------------------------------------------------------------------


def export(store: Store, out: Path) -> Path:
    """Write a self-contained bundle of ``store``'s history to ``out``."""
    out = Path(out).absolute()
    if out.suffix not in (".tar", ".fmb") and not out.name.endswith(".tar.gz"):
        out = out.with_name(out.name + ".fmb")
    objects = Path(str(store.path) + ".objects")
    tmp = _private_dir(out.parent, EXPORT_PREFIX)
    try:
        db = tmp / "history.duckdb"
        store.copy_to(db)
        copy = Store.open(db)
        try:  # trust stays with the machine: the copy carries neither id nor trust list
            copy.delete_meta("origin")
            copy.delete_meta("trusted")
        finally:
            copy.close()
        info = {"format": FORMAT, "origin": _fingerprint(store.meta("origin")),
                "exported_by": _fingerprint(machine_id(create=False)), "source": str(store.path),
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "steps": store.last_step}
        part = tmp / "bundle.part"
        with _open_new(part) as f:
            with tarfile.open(fileobj=f, mode="w") as tar:
                data = json.dumps(info, indent=1).encode()
                ti = tarfile.TarInfo("bundle.json")
                ti.size, ti.mode = len(data), 0o600
                tar.addfile(ti, io.BytesIO(data))
                tar.add(db, "history.duckdb", filter=_member_out)
                if objects.is_dir():
                    tar.add(objects, "history.duckdb.objects", filter=_member_out)
                # flow records a dead process left in its log (no kernel has
                # checkpointed them yet): the next kernel on the import replays them
                log = Path(str(store.path) + ".flowlog")
                if log.is_file() and log.stat().st_size:
                    tar.add(log, "history.duckdb.flowlog", filter=_member_out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)  # replaces a link at ``out`` itself, never its target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _member_out(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = Path(ti.name).name
    if not (ti.isreg() or ti.isdir()) or name.startswith(".tmp-") or name == UNSETTLED:
        # temp files of an object being written, and this machine's note that
        # its writes may have left orphans; nothing but files and folders
        return None
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = 0o700 if ti.isdir() else 0o600
    return ti


# -- import -----------------------------------------------------------------------------------


def size_cap(bundle_size: int) -> int:
    """The most an import of a bundle this size may write (FM_IMPORT_MAX_BYTES)."""
    env = os.environ.get("FM_IMPORT_MAX_BYTES", "")
    if env.isdigit():
        return int(env)
    return 4 * bundle_size + SLACK


def import_bundle(bundle: Path, target: Path, trusted: bool, force: bool = False) -> dict:
    """Unpack ``bundle`` as the history at ``target``; returns its manifest."""
    bundle, target = Path(bundle), Path(target).absolute()
    if target.exists() and not force:
        raise UsageError(f"a history exists at {target} already; move it away or pass --force")
    try:
        cap = size_cap(bundle.stat().st_size)
        tar = tarfile.open(bundle, "r")
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(f"{bundle} is not a flowmetal bundle ({_why(exc)}); "
                         "make one with `fm export` or `%fm export`") from None
    with tar:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        holder = _hold(target) if force else None
        tmp = _private_dir(target.parent, IMPORT_PREFIX)
        try:
            _extract(tar, tmp / "new", cap, bundle)
            info = _manifest(tmp / "new", bundle)
            _adopt(tmp / "new" / "history.duckdb", bundle, trusted, info)
            _swap(tmp, target)
        finally:
            if holder is not None:
                holder.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def _hold(target: Path) -> Store | None:
    """Refuse to replace a history a live kernel or worker holds; else hold
    it (read-only, which a kernel opening now would wait on) until the swap."""
    if not target.exists():
        return None
    try:
        return Store.open(target, read_only=True)
    except HistoryLocked as exc:
        who = f"process {exc.pid}" if exc.pid else "another process"
        raise HistoryError(f"{target} is held by {who} (a live kernel or `fm worker`); "
                           "stop it before replacing its history with --force") from None
    except HistoryError:
        return None  # unreadable or an old schema: nothing holds it, replacing is what was asked


def _safe_name(ti: tarfile.TarInfo) -> str:
    name = ti.name
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\x00" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise UnsafeBundle(f"bundle member {name!r} is not a plain relative path; refused")
    if parts[0] not in _TOP or (len(parts) > 1 and parts[0] != "history.duckdb.objects"):
        raise UnsafeBundle(f"bundle member {name!r} is not part of a flowmetal bundle; refused")
    return name


def _kind(ti: tarfile.TarInfo) -> str:
    return ("symbolic link" if ti.issym() else "hard link" if ti.islnk()
            else "device" if ti.isdev() else "fifo" if ti.isfifo() else f"tar type {ti.type!r}")


def _extract(tar: tarfile.TarFile, dest: Path, cap: int, bundle: Path) -> None:
    """Write the members ourselves: files and folders only, each made new
    (O_EXCL|O_NOFOLLOW) in a folder we made, so nothing can point outside."""
    dest.mkdir(mode=0o700)
    written = 0
    try:
        for ti in tar:
            name = _safe_name(ti)
            if ti.isdir():
                (dest / name).mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if not ti.isreg():
                raise UnsafeBundle(f"bundle member {name!r} is a {_kind(ti)}; "
                                   "a bundle holds only files and folders; refused")
            if ti.size > cap - written:
                raise UnsafeBundle(
                    f"bundle member {name!r} would take the import past {human_bytes(cap)} "
                    f"({human_bytes(ti.size)}, from a {human_bytes(bundle.stat().st_size)} bundle); "
                    "refused; set FM_IMPORT_MAX_BYTES to allow more")
            (dest / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                out = _open_new(dest / name)
            except FileExistsError:
                raise UnsafeBundle(f"bundle member {name!r} appears twice; refused") from None
            written += _copy(tar.extractfile(ti), out, ti.size, name)
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise UsageError(f"{bundle} is damaged or truncated ({_why(exc)}); export it again") from None
    except OSError as exc:
        raise HistoryError(f"cannot unpack {bundle} beside {dest.parent} ({_why(exc)})") from None


def _copy(src, out, size: int, name: str) -> int:
    done = 0
    with out:
        while done < size:
            block = src.read(min(_COPY, size - done))
            if not block:
                raise UsageError(f"bundle member {name!r} is truncated")
            out.write(block)
            done += len(block)
    return done


def _manifest(folder: Path, bundle: Path) -> dict:
    if not (folder / "bundle.json").is_file() or not (folder / "history.duckdb").is_file():
        raise UsageError(f"{bundle} is not a flowmetal bundle (no bundle.json/history.duckdb)")
    try:
        info = json.loads((folder / "bundle.json").read_text())
    except ValueError:
        raise UsageError(f"{bundle} has an unreadable bundle.json") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        fmt = info.get("format") if isinstance(info, dict) else None
        raise UsageError(f"{bundle} has bundle format {fmt}; this fm knows {FORMAT}")
    return info


def _adopt(db: Path, bundle: Path, trusted: bool, info: dict) -> None:
    """Make the unpacked database this machine's copy, before it is in place:
    whatever trust it claims is dropped; only the user's --trust counts."""
    store = Store.open(db)
    try:
        store.delete_meta("origin")
        store.delete_meta("trusted")
        if trusted:
            trust(store)
        store.append_event("imported", payload={"bundle": str(bundle), "trusted": trusted,
                                                "origin": info.get("origin")})
    finally:
        store.close()
    os.chmod(db, 0o600)


def _swap(tmp: Path, target: Path) -> None:
    """Move the old history (and its sidecar files) aside, then the new one
    in: objects first, the database last, since the database is the history."""
    old = tmp / "old"
    old.mkdir(mode=0o700)
    for suffix in ("", *_SIDECARS):
        p = Path(str(target) + suffix)
        if os.path.lexists(p):
            os.replace(p, old / f"h{suffix}")
    new = tmp / "new"
    for suffix in (".objects", ".flowlog"):
        if os.path.lexists(new / f"history.duckdb{suffix}"):
            os.replace(new / f"history.duckdb{suffix}", Path(str(target) + suffix))
    os.replace(new / "history.duckdb", target)


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def require_history(path: Path) -> None:
    if not Path(path).exists():
        raise HistoryError(f"no history at {path}")
