"""Time as the engine sees it: the real clock in production, a hand-advanced one in tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref


class Clock:
    """Wall-clock time in seconds since the epoch, and a way to wait for it to pass."""

    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    async def wait(self, wake: asyncio.Event, deadline: float | None, max_wait: float) -> None:
        """Return when `wake` is set, `deadline` (clock seconds) passes or `max_wait` (real s)."""
        timeout = max_wait if deadline is None else max(0.0, min(max_wait, deadline - self.now()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)



class ManualClock(Clock):
    """A clock that moves only when told to; advancing it wakes every waiting worker."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._waiters: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._now += seconds
        for wake in list(self._waiters):
            wake.set()

    def set(self, when: float) -> None:
        self.advance(max(0.0, when - self._now))

    async def wait(self, wake: asyncio.Event, deadline: float | None, max_wait: float) -> None:
        self._waiters.add(wake)
        if deadline is not None and deadline <= self._now:
            await asyncio.sleep(0)  # always yield, so a caller's loop cannot starve others
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), max_wait)
