"""How values go into a flow journal: plain JSON as itself (so SQL sees
it), anything else as a cloudpickle in the history's objects folder named by
a marker; errors as their type, message and the user's own traceback. A
mixin of Journal (journal.py), which has the store and the fsync setting."""

from __future__ import annotations

import base64
import json
import math
import reprlib
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

from ..errors import NotStorable
from ..record import trust
from ..record.objects import ObjectFiles


def _plain(v: Any, depth: int = 0) -> bool:
    """JSON that reads back as the very same value (a tuple would come back
    a list, a NaN would not parse in DuckDB): only those go in as JSON."""
    t = type(v)
    if v is None or t in (str, bool, int):
        return True
    if t is float:
        return math.isfinite(v)
    if depth > 50:
        return False
    if t is list:
        return all(_plain(x, depth + 1) for x in v)
    if t is dict:
        return "$fm" not in v and all(type(k) is str and _plain(x, depth + 1) for k, x in v.items())
    return False


def _qualname(t: type) -> str:
    mod = getattr(t, "__module__", "") or ""
    return t.__qualname__ if mod in ("builtins", "") else f"{mod}.{t.__qualname__}"


class JournalValues:
    @property
    def objects(self) -> ObjectFiles:
        if self._objects is None:
            self._objects = ObjectFiles(self.store.sidecar(".objects"), fsync=self.fsync)
        return self._objects

    # -- encoding ----------------------------------------------------------

    def encode(self, value: Any, what: str,
               fix: str = "return plain data (dict, list, str, numbers) or an object "
                          "cloudpickle can serialise") -> str:
        """JSON text for a journal column: the value itself when it is plain
        JSON (so SQL sees it), else a marker naming a cloudpickle in the
        history's objects folder. ``what`` names the value ("the result of
        step 'fetch' ..."), ``fix`` what to do if it cannot be stored."""
        if _plain(value):
            return json.dumps(value)
        try:
            data = cloudpickle.dumps(value)
        except Exception as exc:
            raise NotStorable(
                f"{what} is a {_qualname(type(value))}, which is neither JSON nor picklable "
                f"({type(exc).__name__}: {exc}); {fix}") from None
        key = self.objects.put(data)
        return json.dumps({"$fm": "pickle", "key": key, "type": _qualname(type(value)),
                           "repr": reprlib.repr(value)})

    def decode(self, text: str | None) -> Any:
        if text is None:
            return None
        value = json.loads(text)
        if isinstance(value, dict) and value.get("$fm") == "pickle":
            return trust.unpickle(trust.gate(self.store), self.objects.get(value["key"]))
        return value

    @staticmethod
    def encode_error(exc: BaseException) -> str:
        try:
            pickled = base64.b64encode(cloudpickle.dumps(exc)).decode() if len(str(exc)) < 65536 else None
        except Exception:
            pickled = None
        tb = _user_traceback(exc)[-8000:]
        return json.dumps({"type": _qualname(type(exc)), "message": str(exc), "traceback": tb,
                           "pickle": pickled}, default=str)

    def decode_error(self, text: str | None) -> tuple[BaseException | None, dict[str, Any]]:
        """(the recorded exception rebuilt, or None if it cannot be; the record).
        Raises Untrusted rather than run an untrusted history's pickle."""
        info = json.loads(text) if text else {}
        exc = None
        if info.get("pickle"):
            gate = trust.gate(self.store)
            gate.require()  # outside the try: refusing is not "cannot be rebuilt"
            try:
                exc = trust.unpickle(gate, base64.b64decode(info["pickle"]))
            except Exception:
                exc = None
        return exc, info

    # -- appending -----------------------------------------------------------


_PACKAGE = str(Path(__file__).resolve().parent.parent)


def _user_traceback(exc: BaseException) -> str:
    """The traceback without fm_kernel's own frames: what is stored is for
    the flow's author, who needs their lines, not our replay machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not str(Path(f.filename).resolve()).startswith(_PACKAGE)]
    head = "Traceback (most recent call last):\n" if frames else ""
    return head + "".join(traceback.format_list(frames)) + \
        "".join(traceback.format_exception_only(type(exc), exc))
