"""StepThreads: calls that wait for each other all get threads (more than the few started at
once), answers and errors reach the caller, and shutdown lets queued calls finish."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stepwise.threads import CORE_THREADS, StepThreads


async def test_calls_that_block_each_get_a_thread_past_the_core_ones() -> None:
    """Eight calls that each wait for all eight: they end only if all run at once, so the
    pool must start threads past CORE_THREADS for calls that wait."""
    pool = StepThreads(16, "t")
    barrier = threading.Barrier(2 * CORE_THREADS, timeout=10)
    results = await asyncio.gather(*(pool.run(lambda i=i: (barrier.wait(), i)[1])
                                     for i in range(2 * CORE_THREADS)))
    assert results == list(range(2 * CORE_THREADS))
    assert len(pool.threads) >= 2 * CORE_THREADS
    pool.shutdown()


async def test_answers_errors_and_the_bound() -> None:
    pool = StepThreads(2, "t")
    assert await pool.run(lambda: "ok") == "ok"
    with pytest.raises(ZeroDivisionError):
        await pool.run(lambda: 1 / 0)
    many = await asyncio.gather(*(pool.run(lambda i=i: i * i) for i in range(200)))
    assert many == [i * i for i in range(200)]
    assert len(pool.threads) <= 2
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.run(lambda: None)


async def test_shutdown_lets_queued_calls_finish_and_threads_end() -> None:
    pool = StepThreads(1, "t")
    gate = threading.Event()
    first = pool.run(gate.wait)
    second = pool.run(lambda: "queued")
    pool.shutdown()
    gate.set()
    assert await first is True and await second == "queued"
    for thread in pool.threads:
        thread.join(5)
    assert pool.alive == 0
