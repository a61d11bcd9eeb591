"""Threads for plain (sync) user code called from an event loop.

Plain step code never runs on an event loop, so every plain step of an async function crosses
to a thread and back. `loop.run_in_executor` pays for two futures chained across threads and
one loop wake-up per call; with a hundred runs in flight that crossing cost more than the
durable write of the step. Here a call is a queue entry and one future, and the answers that
finish while a loop is busy reach it together, with one wake-up.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Answer = tuple["asyncio.Future[Any]", bool, Any]


class StepThreads:
    """Up to `max_threads` threads, started as calls find none idle, kept until shutdown."""

    def __init__(self, max_threads: int, name: str) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self.name = name
        self.threads: list[threading.Thread] = []
        self._work: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for work and not yet promised to a call
        self._answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        self._closed = False

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Call `fn()` in a thread; the future (of the running loop) gets what it returns or
        raises. Cancelling the future does not stop the call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: no new calls after shutdown")
            if self._idle:
                self._idle -= 1
            elif len(self.threads) < self.max_threads:
                thread = threading.Thread(target=self._serve, daemon=True,
                                          name=f"{self.name}-{len(self.threads)}")
                self.threads.append(thread)
                thread.start()
        self._work.put((fn, loop, future))
        return future

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fn, loop, future = item
            try:
                answer: _Answer = (future, True, fn())
            except BaseException as exc:  # handed to the caller, whatever it is
                answer = (future, False, exc)
            with self._lock:
                waiting = self._answers.setdefault(loop, [])
                waiting.append(answer)
                first = len(waiting) == 1
                self._idle += 1
            if first:  # else a wake-up is on its way and takes this answer too
                try:
                    loop.call_soon_threadsafe(self._deliver, loop)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    with self._lock:
                        self._answers.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            answers = self._answers.pop(loop, [])
        for future, ok, value in answers:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def shutdown(self, cancel_queued: bool = False) -> None:
        """Take no new calls; threads end once the calls queued before are done (with
        `cancel_queued`, those not started are dropped, their futures cancelled). A thread
        stuck in user code stays stuck: Python cannot stop it."""
        with self._lock:
            self._closed = True
            threads = len(self.threads)
        while cancel_queued:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _, loop, future = item
                if not loop.is_closed():
                    loop.call_soon_threadsafe(future.cancel)
        for _ in range(threads):
            self._work.put(None)

    @property
    def alive(self) -> int:
        """Threads not ended yet (busy, idle, or stuck)."""
        return sum(thread.is_alive() for thread in self.threads)
