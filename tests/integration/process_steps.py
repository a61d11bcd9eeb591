"""Step code for tests/integration/test_process_pool.py: module-level, so that a child
process imports it by reference."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Any

from stepwise.errors import NonRetriableError, RetryAfterError


def add(a: Any, b: Any) -> Any:
    return a + b


def pid() -> int:
    return os.getpid()


def raise_value_error() -> None:
    raise ValueError("bad value in the child")


def raise_non_retriable() -> None:
    raise NonRetriableError("give up at once")


def raise_retry_after() -> None:
    raise RetryAfterError("come back later", delay=2.5)


def exit_1() -> None:
    os._exit(1)


def segfault() -> None:
    ctypes.string_at(0)


def grow_memory() -> None:
    hoard = []
    while True:
        hoard.append(bytearray(b"x") * (10 * 1024 * 1024))  # every page written: resident
        time.sleep(0.05)


def sleep_long(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def async_double(x: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"double": 2 * x, "pid": os.getpid()}


def returns_unstorable() -> object:
    return object()


def cpu(n: int) -> dict[str, Any]:
    """A pure-Python loop: when it started and ended (wall clock) and where it ran."""
    start = time.time()
    total = 0
    for i in range(n):
        total += i * i % 7
    return {"start": start, "end": time.time(), "pid": os.getpid(), "total": total}
