"""Work the kernel does between cells, on its own loop, so no reply waits for
it: re-checking small objects for mutations no cell named (state/recheck.py).

After each recorded cell a round starts IDLE_AFTER later: one look at a time
(each within recheck.SMALL_BUDGET), IDLE_GAP apart, until every small name
has been looked at. While the kernel stays idle, rounds come again, further
apart each time (a mutation made by a thread or a timer after the reply is
found before the next cell) and never taking more than a tenth of the time
they wait. A request cancels what is scheduled; the next recorded cell
starts over. Looks run on the kernel's event loop, between messages, never
while a cell runs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .state.states import States

IDLE_AFTER = 0.05  # s after a reply before the first look: a cell sent at once waits for none
IDLE_GAP = 0.01  # s between two looks of a round
REST_FIRST = 1.0  # s between the first round and the next, doubling each time...
REST_MOST = 60.0  # ...up to this
REST_SHARE = 10  # a round waits at least this many times what it took


class IdleRechecks:
    def __init__(self, states: Callable[[], States | None], log: logging.Logger | logging.LoggerAdapter) -> None:
        self._states, self._log = states, log
        self._handle: asyncio.TimerHandle | None = None
        self._rounds = 0  # rounds done since the last cell
        self._spent = 0.0  # seconds this round took so far

    def start(self) -> None:
        """After a recorded cell (on the kernel's loop)."""
        self.stop()
        self._rounds, self._spent = 0, 0.0
        self._later(IDLE_AFTER, new_round=False)

    def stop(self) -> None:
        """A request came: it must not wait for a look."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _later(self, delay: float, new_round: bool) -> None:
        self._handle = asyncio.get_running_loop().call_later(delay, self._look, new_round)

    def _look(self, new_round: bool) -> None:
        self._handle = None
        states = self._states()
        t = time.perf_counter()
        try:
            more = states is not None and states.idle_recheck(new_round)
        except Exception:
            self._log.warning("flowmetal: re-checking small objects between cells failed; "
                              "the next capture checks them instead", exc_info=True)
            return
        self._spent += time.perf_counter() - t
        if more:
            self._later(IDLE_GAP, new_round=False)
            return
        if states is None:
            return
        rest = max(min(REST_FIRST * 2 ** self._rounds, REST_MOST), REST_SHARE * self._spent)
        self._rounds, self._spent = self._rounds + 1, 0.0
        self._later(rest, new_round=True)
