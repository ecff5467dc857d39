"""Flow steps: ``@step`` functions whose result is journaled when called
inside a flow, their attempts, retries and timeouts."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import time
from typing import Any, Callable

from ..errors import NotStorable, Timeout, UsageError
from .context import CURRENT_RUN, CURRENT_STEP, RunContext, StepContext, registry, replay
from .journal import Journal
from .parking import blocking, can_park, park


class Step:
    """A function whose result is journaled when called inside a flow.
    Outside flows it is the plain function (no journal, no retries)."""

    def __init__(self, fn: Callable[..., Any], retries: int = 0, backoff: float = 2.0,
                 timeout: float | None = None, retry_delay: float = 1.0, name: str | None = None):
        functools.update_wrapper(self, fn)
        self.fn, self.retries, self.backoff, self.timeout = fn, retries, backoff, timeout
        self.retry_delay = retry_delay
        self.name = name or fn.__qualname__
        _validate(self)
        self.is_async = inspect.iscoroutinefunction(fn)

    def __reduce__(self):  # the namespace snapshot stores the function, not our locks
        return (Step, (self.fn, self.retries, self.backoff, self.timeout, self.retry_delay, self.name))

    def __repr__(self) -> str:
        return f"<fm step {self.name} retries={self.retries} timeout={self.timeout}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = CURRENT_RUN.get()
        if self.is_async:
            return self._acall(ctx, args, kwargs)
        if ctx is None:
            return self.fn(*args, **kwargs)
        p = ctx.take()
        done, value = replay(ctx.check(p, self.name))
        return value if done else attempts(ctx, p, self, lambda: self.fn(*args, **kwargs))

    async def _acall(self, ctx: RunContext | None, args: tuple, kwargs: dict) -> Any:
        if ctx is None:
            return await self.fn(*args, **kwargs)
        p = ctx.take()
        done, value = replay(ctx.check(p, self.name))
        if done:
            return value
        # the body runs in this thread's loop; attempts run in a helper thread
        # so that retries' waits and journaling do not block the loop
        loop = asyncio.get_running_loop()

        def body() -> Any:
            return asyncio.run_coroutine_threadsafe(self.fn(*args, **kwargs), loop).result()

        return await asyncio.to_thread(attempts, ctx, p, self, body)


def _validate(st: Step) -> None:
    """Refuse options that cannot mean what they say, when decorating rather
    than on the first failure of a run days later."""
    def bad(option: str, value: Any, want: str) -> UsageError:
        return UsageError(f"step {st.name!r}: {option}={value!r} is not allowed; {option} must be "
                          f"{want}")

    if isinstance(st.retries, bool) or not isinstance(st.retries, int) or st.retries < 0:
        raise bad("retries", st.retries, "a whole number >= 0 (0: no retries)")
    if st.timeout is not None and (not _number(st.timeout) or st.timeout <= 0):
        raise bad("timeout", st.timeout, "a number of seconds > 0, or None for no timeout")
    if not _number(st.backoff) or st.backoff < 0:
        raise bad("backoff", st.backoff, "a number >= 0 (each retry waits backoff times longer)")
    if not _number(st.retry_delay) or st.retry_delay < 0:
        raise bad("retry_delay", st.retry_delay, "a number of seconds >= 0")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def step(fn: Callable[..., Any] | None = None, *, retries: int = 0, backoff: float = 2.0,
         timeout: float | None = None, retry_delay: float = 1.0, name: str | None = None) -> Any:
    """``@step`` or ``@step(retries=3, backoff=2.0, timeout=30)``: attempt k+1
    waits ``retry_delay * backoff**(k-1)`` seconds after attempt k failed."""
    if fn is None:
        return lambda f: Step(f, retries, backoff, timeout, retry_delay, name)
    return Step(fn, retries, backoff, timeout, retry_delay, name)


def attempts(ctx: RunContext, p: int, st: Step, body: Callable[[], Any]) -> Any:
    """Run ``body`` until it succeeds or its retries are spent, journaling
    every attempt; the result is durable before this returns."""
    attempt = ctx.attempts.get(p, 0)
    while True:
        _wait_for_retry(ctx, p)
        attempt += 1
        ctx.run.check_cancel()
        sctx = StepContext(ctx.run.id, p, st.name, attempt)
        started = time.time()
        try:
            status, value = "ok", _call(body, sctx, st.timeout)
        except _TimedOut:
            status, value = "timeout", Timeout(
                f"step {st.name!r} (position {p} of run {ctx.run.id}) did not finish within "
                f"{st.timeout}s on attempt {attempt}; it was abandoned (its thread may still run)")
        except Exception as exc:
            status, value = "error", exc
        if settle(ctx, p, st, attempt, started, status, value):
            return value


def _wait_for_retry(ctx: RunContext, p: int) -> None:
    """Wait until the retry time journaled with the last failed attempt at
    ``p`` (none: go at once). It was journaled before waiting, like a sleep's
    wake time, so a run resumed mid-backoff waits only what is left. A long
    enough backoff parks the run (parking.py): the timer heap executes it
    again at the retry time, and replay brings it back here to go on."""
    rec = ctx.latest.get(p)
    if rec is not None and rec["status"] in ("error", "timeout"):
        retry_at = (rec.get("detail") or {}).get("retry_at")
        if retry_at is not None:
            if can_park(ctx, retry_at - time.time()):
                park(ctx, retry_at, None, f"the retry of step {rec['name']!r} at position {p}")
            ctx.run.pause(retry_at - time.time())


def settle(ctx: RunContext, p: int, st: Step, attempt: int, started: float, status: str,
           value: Any) -> bool:
    """Journal one attempt ("ok", "error" or "timeout"; ``value`` is the
    result or the exception). True: the step succeeded with ``value``;
    False: it is to be retried; raises when it has failed for good."""
    if status == "ok":
        try:
            text = registry().journal.encode(
                value, f"the result of step {st.name!r} (position {p} of run {ctx.run.id})")
        except NotStorable as exc:
            status, value, attempt = "failed", exc, max(attempt, st.retries + 1)
        else:
            ctx.record(p, st.name, "ok", attempt, started, result=text)
            return True
    final = attempt > st.retries
    detail = None if final else {"retry_at": time.time() + retry_delay(st, attempt)}
    ctx.record(p, st.name, "failed" if final else status, attempt, started,
               error=Journal.encode_error(value), detail=detail)
    if final:
        raise value
    return False


def retry_delay(st: Step, attempt: int) -> float:
    """Seconds to wait after failed ``attempt`` of ``st`` before the next."""
    return st.retry_delay * st.backoff ** (attempt - 1)


class _TimedOut(Exception):
    pass


def _call(body: Callable[[], Any], sctx: StepContext, timeout: float | None) -> Any:
    def inside() -> Any:
        CURRENT_RUN.set(None)  # a step's own calls are plain calls, not journal entries
        CURRENT_STEP.set(sctx)
        return body()

    run = contextvars.copy_context().run
    if timeout is None:
        with blocking():  # user code: a run worker may wait in it for long (parking.py)
            return run(inside)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = run(inside)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"fm-step-{sctx.name}", daemon=True)
    t.start()
    with blocking():
        t.join(timeout)
    if t.is_alive():
        raise _TimedOut()
    if "error" in box:
        raise box["error"]
    return box["value"]
