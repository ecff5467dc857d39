"""Trust: whether this process may unpickle what a history holds.

Loading a stored object or a journal pickle runs code chosen by whoever made
the pickle, so trust is positive evidence, never the absence of a warning:
a history is trusted when its fm_meta ``origin`` is recorded and is this
machine's id (the history was created here), or when this machine's id is
in its fm_meta ``trusted`` list (``fm trust``, ``fm import --trust``). A
missing or unreadable origin is untrusted, and nothing stamps an origin on
a history that exists already: only a history this process created gets
one (``stamp_origin``).

Every unpickling of history content goes through ``unpickle`` (the one
gate); ``Gate.require`` lets a caller refuse before it starts changing a
namespace. tests/faults/test_security.py greps the package for other
unpickling calls.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import stat
import tempfile
import threading
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import Untrusted

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

_lock = threading.Lock()
_memory_id: str | None = None  # this process's id when none could be stored


def machine_id_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flowmetal" / "machine-id"


def _fallback_path() -> Path:
    """Where the id goes when the data folder cannot hold it (read-only home):
    a folder of this user's own in the temp dir, so the next kernel finds it."""
    return Path(tempfile.gettempdir()) / f"flowmetal-{os.getuid()}" / "machine-id"


def machine_id(create: bool = True) -> str | None:
    """A random id for this machine and user. With ``create=False`` (read
    paths) nothing is written, and None means no id exists yet: then no
    history can have been made here. When the id cannot be stored at all,
    this process keeps one in memory, so the histories it creates stay its own."""
    global _memory_id
    if os.environ.get("FM_MACHINE_ID"):
        return os.environ["FM_MACHINE_ID"]
    paths = (machine_id_path(), _fallback_path())
    for path in paths:
        stored = _read_id(path)
        if stored:
            return stored
    with _lock:
        if _memory_id is not None or not create:
            return _memory_id
        new = uuid.uuid4().hex
        for path in paths:
            try:
                return _store_id(path, new, private=path == paths[1])
            except OSError as exc:
                log.warning("cannot store the machine id at %s (%s)", path, exc)
        log.warning("histories this process creates are trusted by it only; "
                    "set FM_MACHINE_ID to keep one")
        _memory_id = new
        return new


def _read_id(path: Path) -> str | None:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None  # planted, or readable by others: not an id to rest trust on
        return path.read_text().strip() or None
    except OSError:
        return None


def _store_id(path: Path, new: str, private: bool) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path.parent)
    if private and (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077):
        raise OSError(f"{path.parent} is not a private folder of this user")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process made it meanwhile, or it is not ours
        stored = _read_id(path)
        if stored is None:
            raise OSError(f"{path} is not a private file of this user") from None
        return stored
    with os.fdopen(fd, "w") as f:
        f.write(new)
    return new


def stamp_origin(store: "Store") -> None:
    """Record this machine as the origin of a history this process just
    created. An existing history is never stamped: one without an origin
    came from somewhere we cannot vouch for."""
    if getattr(store, "created", False) and not store.read_only and store.meta("origin") is None:
        store.set_meta("origin", machine_id() or "")


def _trusted_here(store: "Store") -> bool:
    me = machine_id(create=False)
    if not me:
        return False
    try:
        origin = store.meta("origin")
        trusted = json.loads(store.meta("trusted") or "[]")
    except Exception as exc:  # an unreadable record of trust is no trust
        log.warning("cannot read the trust record of %s: %s", store.path, exc)
        return False
    return origin == me or (isinstance(trusted, list) and me in trusted)


def trust(store: "Store") -> None:
    """Trust the history for this machine (``fm trust``)."""
    try:
        known = json.loads(store.meta("trusted") or "[]")
    except ValueError:
        known = []
    trusted = {t for t in known if isinstance(t, str)} | {machine_id()}
    store.set_meta("trusted", json.dumps(sorted(trusted)))
    gate(store).refresh()


def untrusted_message(path: Path | str) -> str:
    return (f"the objects in {path} were not made on this machine and loading them means "
            "unpickling, which runs code; if you trust where it came from, run "
            f"`fm trust {path}` (or import the bundle with `fm import BUNDLE --trust`)")


class Gate:
    """The trust decision for one open history, made once: while a process
    holds a history read-write nobody else can change its trust record."""

    def __init__(self, store: "Store | None") -> None:
        self.store = store
        self._trusted: bool | None = None

    @property
    def trusted(self) -> bool:
        if self.store is None:
            return True  # objects this process wrote itself, with no history behind them
        if self._trusted is None:
            self._trusted = _trusted_here(self.store)
        return self._trusted

    def refresh(self) -> None:
        self._trusted = None

    def require(self) -> None:
        if not self.trusted:
            raise Untrusted(untrusted_message(self.store.path if self.store else "?"))


_GATES: "weakref.WeakKeyDictionary[Store, Gate]" = weakref.WeakKeyDictionary()
OWN = Gate(None)  # for a Snapshotter over a scratch folder (tests, benchmarks)


def gate(store: "Store") -> Gate:
    """The one Gate of ``store``."""
    with _lock:
        g = _GATES.get(store)
        if g is None:
            g = _GATES[store] = Gate(store)
        return g


def unpickle(g: Gate, data: Any, buffers: Sequence[Any] = (),
             unpickler: type[pickle.Unpickler] = pickle.Unpickler) -> Any:
    """THE place history content is unpickled: refused unless ``g`` trusts it."""
    g.require()
    return unpickler(io.BytesIO(data), buffers=buffers).load()


# Stored output parts a frontend shows without running anything: no markup,
# no script. An untrusted history's other parts (text/html, javascript,
# widget views…) are held back everywhere outputs are shown again.
INERT_MIMES = ("text/plain", "image/png", "image/jpeg", "image/gif")


def inert_parts(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the parts of ``data`` safe to show from an untrusted history, the mime
    types held back)."""
    kept = {k: v for k, v in data.items() if k in INERT_MIMES}
    return kept, sorted(k for k in data if k not in INERT_MIMES)
