"""The machinery behind parking (fm_kernel/flows/parking.py), in-process:
the worker pool stays at CORE threads for quick work, lends a thread to
each segment blocked in user code (so slow steps never starve ready runs),
the timer heap wakes in order, and a Park is no Exception."""

from __future__ import annotations

import threading
import time

from fm_kernel.flows import parking
from fm_kernel.flows.parking import Park, Timers, Workers, blocking


def test_quick_work_runs_on_at_most_core_threads() -> None:
    w = Workers(core=4)
    done = threading.Semaphore(0)
    peak = [0]

    def quick() -> None:
        peak[0] = max(peak[0], w.threads)
        time.sleep(0.001)
        done.release()

    for _ in range(300):
        w.submit(quick)
    for _ in range(300):
        assert done.acquire(timeout=10)
    assert peak[0] <= 4, peak


def test_segments_blocked_in_user_code_do_not_hold_up_the_others() -> None:
    w = Workers(core=2)
    gate = threading.Event()
    ran = threading.Semaphore(0)

    def slow_step() -> None:
        with blocking():  # a step body waiting on I/O
            gate.wait(10)

    def quick() -> None:
        ran.release()

    for _ in range(6):
        w.submit(slow_step)
    t0 = time.monotonic()
    for _ in range(10):
        w.submit(quick)
    for _ in range(10):
        assert ran.acquire(timeout=5)
    assert time.monotonic() - t0 < 1.0  # not after the watchdog's slow additions
    gate.set()


def test_timers_fire_in_order_and_only_the_current_park() -> None:
    t = Timers()
    fired: list[tuple[str, int]] = []

    class R:
        def __init__(self, name: str) -> None:
            self.id = name

        def timer_fired(self, gen: int) -> None:
            fired.append((self.id, gen))

    now = time.time()
    b, a = R("b"), R("a")
    t.at(now + 0.3, lambda: b.timer_fired(2), "b")
    t.at(now + 0.1, lambda: a.timer_fired(1), "a")
    t.at(now + 0.2, lambda: 1 / 0, "a failing timer")  # logged; the others still fire
    time.sleep(0.6)
    t.stop()
    assert fired == [("a", 1), ("b", 2)]


def test_a_park_is_not_an_exception() -> None:
    assert not issubclass(Park, Exception) and issubclass(Park, BaseException)
    assert parking.PARK_AFTER >= 0.5
