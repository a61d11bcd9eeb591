"""Threads for plain (sync) user code called from an event loop.

Plain step code never runs on an event loop, so every plain step of an async function crosses
to a thread and back. `loop.run_in_executor` pays for two futures chained across threads and
one loop wake-up per call; with a hundred runs in flight that crossing cost more than the
durable write of the step. Here a call is a queue entry and one future, and the answers that
finish while a loop is busy reach it together, with one wake-up.

Threads are started for calls that wait, not for every call that finds no thread idle at once:
a few threads (CORE_THREADS) start on demand, more only when calls have waited SPAWN_AFTER_S
(the threads are busy with calls that take time: blocking I/O, long computations). A hundred
runs each calling a no-op step at once then share a few threads instead of starting a hundred,
which cost a third of the throughput in GIL hand-offs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Answer = tuple["asyncio.Future[Any]", bool, Any]

#: Threads started as soon as a call finds none idle.
CORE_THREADS = 4
#: Past CORE_THREADS, a thread is started for calls that have waited this long (seconds).
SPAWN_AFTER_S = 0.002


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
        self._waiting = 0  # calls queued with no thread promised to them
        self._check_due = 0.0  # when a look at the waiting calls was scheduled (0: none is)
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Call `fn(*args, **kwargs)` in a thread, in a copy of the caller's context (its
        context variables: the step a log line belongs to, the trace); the future (of the
        running loop) gets what it returns or raises. Cancelling it does not stop the call."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: no new calls after shutdown")
            if self._idle:
                self._idle -= 1
            elif len(self.threads) < min(CORE_THREADS, self.max_threads):
                self._start()
            else:
                self._waiting += 1
                now = time.monotonic()
                # (a look scheduled long ago on a loop since stopped never comes: schedule anew)
                if len(self.threads) < self.max_threads and \
                        now - self._check_due > 50 * SPAWN_AFTER_S:
                    self._check_due = now
                    loop.call_later(SPAWN_AFTER_S, self._spawn_for_waiting, loop)
        self._work.put((call, loop, future))
        return future

    def _start(self) -> None:
        """Start a thread (hold `_lock`)."""
        thread = threading.Thread(target=self._serve, daemon=True,
                                  name=f"{self.name}-{len(self.threads)}")
        self.threads.append(thread)
        thread.start()

    def _spawn_for_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        """Calls still wait: their threads are busy with calls that take time. Start one
        thread per waiting call (up to `max_threads`), and look again later if some wait on."""
        with self._lock:
            self._check_due = 0.0
            if self._closed:
                return
            while self._waiting and len(self.threads) < self.max_threads:
                self._waiting -= 1
                self._start()

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
                answers = self._answers.setdefault(loop, [])
                answers.append(answer)
                first = len(answers) == 1
                if self._waiting:  # take a waiting call on
                    self._waiting -= 1
                else:
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
