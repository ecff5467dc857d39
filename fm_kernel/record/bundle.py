"""Moving a history between machines: a bundle is one tar file holding the
database, its objects folder and a small manifest; and trust, because
loading objects means unpickling, and unpickling runs code.

A history remembers the machine that created it (fm_meta 'origin'); objects
load without asking only there, or where `fm import --trust` (or
`fm trust`) recorded this machine in fm_meta 'trusted'.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from ..errors import HistoryError, UsageError
from .store import Store

FORMAT = 1


def machine_id() -> str:
    """A random id for this machine and user, made once."""
    if os.environ.get("FM_MACHINE_ID"):
        return os.environ["FM_MACHINE_ID"]
    path = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "flowmetal" / "machine-id"
    try:
        return path.read_text().strip()
    except OSError:
        pass
    new = uuid.uuid4().hex
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(new)
    except OSError:
        pass
    return new


def ensure_origin(store: Store) -> None:
    if store.meta("origin") is None and not store.read_only:
        store.set_meta("origin", machine_id())


def is_trusted(store: Store) -> bool:
    me = machine_id()
    origin = store.meta("origin")
    return origin in (None, me) or me in json.loads(store.meta("trusted") or "[]")


def trust(store: Store) -> None:
    trusted = set(json.loads(store.meta("trusted") or "[]")) | {machine_id()}
    store.set_meta("trusted", json.dumps(sorted(trusted)))


def untrusted_message(path: Path) -> str:
    return (f"the objects in {path} were made on another machine and loading them means "
            "unpickling, which runs code; if you trust where it came from, run "
            f"`fm trust {path}` (or import the bundle with `fm import BUNDLE --trust`)")


def export(store: Store, out: Path) -> Path:
    """Write a self-contained bundle of ``store``'s history to ``out``."""
    out = Path(out).absolute()
    if out.suffix not in (".tar", ".fmb") and not out.name.endswith(".tar.gz"):
        out = out.with_name(out.name + ".fmb")
    objects = Path(str(store.path) + ".objects")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        db = Path(tmp) / "history.duckdb"
        store.copy_to(db)
        info = {"format": FORMAT, "origin": store.meta("origin") or machine_id(),
                "exported_by": machine_id(), "source": str(store.path),
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "steps": store.last_step}
        with tarfile.open(out, "w") as tar:
            data = json.dumps(info, indent=1).encode()
            ti = tarfile.TarInfo("bundle.json")
            ti.size, ti.mode = len(data), 0o600
            tar.addfile(ti, io.BytesIO(data))
            tar.add(db, "history.duckdb")
            if objects.is_dir():
                tar.add(objects, "history.duckdb.objects")
    os.chmod(out, 0o600)
    return out


def import_bundle(bundle: Path, target: Path, trusted: bool, force: bool = False) -> dict:
    """Unpack ``bundle`` as the history at ``target``; returns its manifest."""
    bundle, target = Path(bundle), Path(target).absolute()
    if target.exists() and not force:
        raise UsageError(f"a history exists at {target} already; move it away or pass --force")
    try:
        tar = tarfile.open(bundle, "r")
    except (OSError, tarfile.TarError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{bundle} is not a flowmetal bundle ({why}); "
                         "make one with `fm export` or `%fm export`") from None
    with tar, tempfile.TemporaryDirectory() as tmp:
        names = tar.getnames()
        if "bundle.json" not in names or "history.duckdb" not in names:
            raise UsageError(f"{bundle} is not a flowmetal bundle (no bundle.json/history.duckdb)")
        # 'data' refuses absolute paths, links out of the folder and devices
        tar.extractall(tmp, filter="data")
        info = json.loads((Path(tmp) / "bundle.json").read_text())
        if info.get("format") != FORMAT:
            raise UsageError(f"{bundle} has bundle format {info.get('format')}; this fm knows {FORMAT}")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        objects = Path(str(target) + ".objects")
        if force:
            for p in (target, Path(str(target) + ".wal")):
                p.unlink(missing_ok=True)
            shutil.rmtree(objects, ignore_errors=True)
        shutil.move(str(Path(tmp) / "history.duckdb"), target)
        if (Path(tmp) / "history.duckdb.objects").is_dir():
            shutil.move(str(Path(tmp) / "history.duckdb.objects"), objects)
    os.chmod(target, 0o600)
    store = Store.open(target)
    try:
        if trusted:
            trust(store)
        store.append_event("imported", payload={"bundle": str(bundle), "trusted": trusted,
                                                "origin": info.get("origin")})
    finally:
        store.close()
    return info


def require_history(path: Path) -> None:
    if not Path(path).exists():
        raise HistoryError(f"no history at {path}")
