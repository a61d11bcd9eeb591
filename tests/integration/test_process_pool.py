"""The process pool with real child processes: JSON in and out, errors, children that die
(exit, crash, memory bound, cancel, close, a parent killed with kill -9), recycling, and
two children running at once."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from tests.integration import process_steps as steps

from stepwise.payloads import dumps, loads
from stepwise.processes import ChildDied, ChildRaised, ProcessOptions, ProcessPool

ROOT = Path(__file__).parents[2]


async def call(pool: ProcessPool, fn: Callable[..., Any], *args: Any, limit: int = 1 << 20,
               **kwargs: Any) -> Any:
    return loads(await pool.run(fn, dumps(list(args), "args"), dumps(kwargs, "kwargs"),
                                f"output of {fn.__name__}", limit))


@pytest.fixture
async def pool() -> AsyncIterator[ProcessPool]:
    pool = ProcessPool(ProcessOptions(size=1))
    yield pool
    await pool.close()


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def eventually(check: Callable[[], bool], within: float) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, f"not true after {within} s"
        await asyncio.sleep(0.02)


async def wait_gone(pid: int, within: float) -> float:
    """Seconds until `pid` is gone; fails after `within`."""
    start = time.monotonic()
    while not gone(pid):
        assert time.monotonic() - start < within, f"pid {pid} still there after {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_options_are_validated() -> None:
    assert ProcessOptions().size == (os.cpu_count() or 1)
    for bad in ({"size": 0}, {"max_tasks_per_child": -1}, {"max_memory_mb": 1.5},
                {"size": True}):
        with pytest.raises(ValueError, match=f"ProcessOptions.{next(iter(bad))}"):
            ProcessOptions(**bad)


def test_the_errors_pickle_whole() -> None:
    died = pickle.loads(pickle.dumps(ChildDied("gone", -9)))
    assert (str(died), died.exitcode) == ("gone", -9)
    raised = pickle.loads(pickle.dumps(ChildRaised(
        {"name": "ValueError", "message": "m", "stack": "s"}, True, 1.5)))
    assert (raised.error["name"], raised.non_retriable, raised.retry_after_s) == \
        ("ValueError", True, 1.5)


async def test_json_round_trip_and_async_def(pool: ProcessPool) -> None:
    a = {"name": "Zoë", "tags": ["日本", "ü"], "n": [1, 2.5, None, True]}
    b = {"more": {"nested": ["x"]}}
    assert await call(pool, steps.add, [a], [b]) == [a, b]
    assert await call(pool, steps.add, a="snow ☃ ", b="man") == "snow ☃ man"
    text = await pool.run(steps.add, "[1]", '{"b": 2}', "output", 100)
    assert text == "3"
    result = await call(pool, steps.async_double, 21)
    assert result["double"] == 42
    assert result["pid"] in pool.pids and result["pid"] != os.getpid()


@pytest.mark.parametrize(("fn", "name", "message", "non_retriable", "retry_after_s"), [
    (steps.raise_value_error, "ValueError", "bad value in the child", False, None),
    (steps.raise_non_retriable, "NonRetriableError", "give up at once", True, None),
    (steps.raise_retry_after, "RetryAfterError", "come back later", False, 2.5),
])
async def test_an_exception_crosses_as_its_stored_shape(
        pool: ProcessPool, fn: Callable[[], None], name: str, message: str,
        non_retriable: bool, retry_after_s: float | None) -> None:
    with pytest.raises(ChildRaised) as caught:
        await call(pool, fn)
    error = caught.value
    assert error.error["name"] == name
    assert error.error["message"] == message
    assert "process_steps.py" in error.error["stack"]
    assert f"{name}: {message}" in error.error["stack"]
    assert error.non_retriable is non_retriable
    assert error.retry_after_s == retry_after_s
    assert await call(pool, steps.add, 1, 2) == 3  # the child lives on


async def test_a_child_that_exits_or_crashes_fails_only_its_task(pool: ProcessPool) -> None:
    with pytest.raises(ChildDied) as caught:
        await call(pool, steps.exit_1)
    assert caught.value.exitcode == 1
    assert "exited with status 1 (os._exit or sys.exit in the step code)" in str(caught.value)
    assert await call(pool, steps.add, 1, 2) == 3

    with pytest.raises(ChildDied) as caught:
        await call(pool, steps.segfault)
    assert caught.value.exitcode == -signal.SIGSEGV
    assert "died from signal SIGSEGV (a crash in native code)" in str(caught.value)
    assert await call(pool, steps.add, 2, 3) == 5

    # killed from outside (as by the out-of-memory killer)
    child = await call(pool, steps.pid)
    task = asyncio.create_task(call(pool, steps.sleep_long, 60))
    await asyncio.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    with pytest.raises(ChildDied, match=rf"\(pid {child}\) was killed by SIGKILL"):
        await asyncio.wait_for(task, 5)
    assert await call(pool, steps.add, 3, 4) == 7


async def test_children_ignore_sigterm_and_sigint(pool: ProcessPool) -> None:
    child = await call(pool, steps.pid)
    os.kill(child, signal.SIGTERM)
    os.kill(child, signal.SIGINT)
    assert await call(pool, steps.sleep_long, 0.1) == 0.1
    assert await call(pool, steps.pid) == child


async def test_an_idle_child_that_died_is_replaced_without_failing_a_task(
        pool: ProcessPool) -> None:
    child = await call(pool, steps.pid)
    os.kill(child, signal.SIGKILL)
    # until it can be reaped (not just its first thread a zombie): not reaping it here
    await eventually(lambda: os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG
                                       | os.WNOWAIT) is not None, 2)
    assert await call(pool, steps.pid) != child
    assert child not in pool.pids


async def test_a_child_over_the_memory_bound_is_killed() -> None:
    pool = ProcessPool(ProcessOptions(size=1, max_memory_mb=200))
    try:
        await call(pool, steps.add, 1, 1)  # started, so the bound is timed from the task
        start = time.monotonic()
        with pytest.raises(ChildDied) as caught:
            await asyncio.wait_for(call(pool, steps.grow_memory), 10)
        took = time.monotonic() - start
        assert "over the bound of 200 MB per process (max_memory_mb)" in str(caught.value)
        assert "was killed: it used" in str(caught.value)
        assert caught.value.exitcode == -signal.SIGKILL
        assert took < 5
        assert await call(pool, steps.add, 1, 2) == 3
    finally:
        await pool.close()


async def test_a_child_is_replaced_after_max_tasks_per_child() -> None:
    pool = ProcessPool(ProcessOptions(size=1, max_tasks_per_child=2))
    try:
        first, second, third = [await call(pool, steps.pid) for _ in range(3)]
        assert first == second != third
        await wait_gone(first, 3)
        await eventually(lambda: pool.pids == [third], 3)  # the old one reaped
    finally:
        await pool.close()


async def test_cancelling_the_caller_kills_the_child(pool: ProcessPool) -> None:
    child = await call(pool, steps.pid)
    task = asyncio.create_task(call(pool, steps.sleep_long, 60))
    await asyncio.sleep(0.3)  # the warm child is in sleep_long by now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(child, 2)
    assert await call(pool, steps.pid) != child  # replaced on demand
    assert len(pool.pids) == 1


async def test_two_children_run_at_once() -> None:
    pool = ProcessPool(ProcessOptions(size=2))
    try:
        # start both children first, so that neither task waits for a start-up
        await asyncio.gather(call(pool, steps.sleep_long, 0.2),
                             call(pool, steps.sleep_long, 0.2))
        assert len(pool.pids) == 2
        one, two = await asyncio.gather(call(pool, steps.cpu, 4_000_000),
                                        call(pool, steps.cpu, 4_000_000))
        assert one["pid"] != two["pid"]
        assert max(one["start"], two["start"]) < min(one["end"], two["end"])  # overlap
    finally:
        await pool.close()


def module_level_twin(x: int) -> int:
    return x


async def test_code_that_cannot_cross_by_reference_is_refused(pool: ProcessPool) -> None:
    factor = 3

    def closure(x: int) -> int:
        return x * factor

    for fn, name in [(lambda x: x, "<lambda>"), (closure, "closure")]:
        with pytest.raises(TypeError) as caught:
            await call(pool, fn, 1)
        assert str(caught.value).startswith(
            "step code that runs in a process must be a module-level function, got ")
        assert name in str(caught.value)
        assert "pass its arguments through ctx.step.run(step_id, fn, *args)" in str(caught.value)
    assert pool.pids == []  # refused before any child started
    assert await call(pool, module_level_twin, 5) == 5  # a test module's function is fine


async def test_a_result_that_cannot_be_stored_fails_in_the_child(pool: ProcessPool) -> None:
    with pytest.raises(ChildRaised) as caught:
        await call(pool, steps.returns_unstorable)
    assert caught.value.error["name"] == "PayloadError"
    assert "output of returns_unstorable is not JSON-serializable" in \
        caught.value.error["message"]
    assert caught.value.non_retriable is False
    with pytest.raises(ChildRaised) as caught:
        await call(pool, steps.add, "a" * 100, "b", limit=50)
    assert caught.value.error["name"] == "PayloadTooLarge"
    assert "over the limit of 50 bytes" in caught.value.error["message"]


async def test_close_fails_a_running_task_and_ends_every_child() -> None:
    pool = ProcessPool(ProcessOptions(size=2))
    await asyncio.gather(call(pool, steps.pid), call(pool, steps.sleep_long, 0.1))
    children = pool.pids
    assert len(children) == 2
    task = asyncio.create_task(call(pool, steps.sleep_long, 60))
    await asyncio.sleep(0.2)
    await pool.close()
    with pytest.raises(ChildDied, match="was killed: the process pool was closed"):
        await task
    assert pool.pids == []
    for child in children:
        assert gone(child)
    with pytest.raises(ChildDied, match="the process pool is closed"):
        await call(pool, steps.pid)
    await pool.close()  # idempotent


SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from stepwise.processes import ProcessOptions, ProcessPool
from tests.integration.process_steps import pid, sleep_long

async def main():
    pool = ProcessPool(ProcessOptions(size=1))
    child = await pool.run(pid, "[]", "{{}}", "pid", 100)
    task = asyncio.create_task(pool.run(sleep_long, "[60]", "{{}}", "sleep", 100))
    await asyncio.sleep(0.2)
    print(child, flush=True)
    await task

if __name__ == "__main__":
    asyncio.run(main())
"""


async def test_children_die_with_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          cwd=tmp_path, text=True) as parent:
        try:
            assert parent.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 20)
            child = json.loads(line)
            assert not gone(child)
            parent.send_signal(signal.SIGKILL)
            parent.wait()
            await wait_gone(child, 3)
        finally:
            parent.kill()
