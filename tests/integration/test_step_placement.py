"""Where step code runs: plain (sync) step code of an async function in a thread, never on
the event loop, so parallel plain steps overlap; coroutines on the loop; and async code that
holds its loop fails with the place it is stuck at while the other runs move on."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import stepwise
from stepwise.testing import Harness


async def test_plain_step_code_of_an_async_function_runs_in_a_thread(db: str) -> None:
    app = stepwise.App("t")
    seen: dict[str, Any] = {}

    def plain() -> str:
        seen["plain"] = threading.get_ident()
        return "plain"

    async def coroutine() -> str:
        seen["coroutine"] = threading.get_ident()
        return "coroutine"

    @app.function(id="placed", trigger=stepwise.on_event("go"), retries=0)
    async def placed(ctx: stepwise.Context) -> list[str]:
        seen["body"] = threading.get_ident()
        return [await ctx.step.run("plain", plain),
                await ctx.step.run("coroutine", coroutine),
                await ctx.step.run("lambda-coroutine", lambda: coroutine())]

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "placed")
    assert run["status"] == "completed", run
    assert run["output"] == ["plain", "coroutine", "coroutine"]
    assert seen["plain"] != seen["body"], "plain step code ran on the event loop"
    assert seen["coroutine"] == seen["body"]


async def test_parallel_plain_steps_overlap(db: str) -> None:
    """Three plain steps that each wait for the other two: they finish only if they run at
    once (run one after another, the barrier breaks and the steps fail)."""
    app = stepwise.App("t")
    barrier = threading.Barrier(3, timeout=10)

    def transcode(size: int) -> int:
        barrier.wait()
        return size

    @app.function(id="fan-out", trigger=stepwise.on_event("go"), retries=0)
    async def fan_out(ctx: stepwise.Context) -> list[int]:
        return await ctx.step.parallel(*(
            (lambda s=s: ctx.step.run(f"transcode-{s}", transcode, s)) for s in (360, 720, 1080)))

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "fan-out")
    assert run["status"] == "completed", run["error"]
    assert run["output"] == [360, 720, 1080]


async def test_a_plain_step_logs_as_its_step_from_its_thread(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="logs", trigger=stepwise.on_event("go"), retries=0)
    async def logs(ctx: stepwise.Context) -> None:
        await ctx.step.run("noisy", lambda: ctx.logger.info("from the thread"))

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "logs")
    assert run["status"] == "completed", run
    assert [(line["step_id"], line["message"]) for line in run["logs"]] == [
        ("noisy", "from the thread")]


async def test_async_code_that_holds_the_loop_fails_and_other_runs_go_on(db: str) -> None:
    """A blocking call in async body code holds the user loop: its attempt fails within
    seconds naming the file and line, and a run of another function, stuck behind it on the
    same loop, completes on a fresh loop."""
    app = stepwise.App("t")
    release = threading.Event()

    @app.function(id="blocks", trigger=stepwise.on_event("block"), retries=0)
    async def blocks(ctx: stepwise.Context) -> None:
        release.wait(30)  # blocks the loop, as time.sleep would

    @app.function(id="normal", trigger=stepwise.on_event("normal"), retries=0)
    async def normal(ctx: stepwise.Context) -> str:
        await asyncio.sleep(0)
        return await ctx.step.run("work", lambda: "done")

    try:
        async with Harness(app, db, isolate=True, loop_stall_s=0.5) as h:
            blocked = await h.send("block")
            deadline = time.monotonic() + 10
            while (await h.run_for(blocked, "blocks"))["status"] != "running":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            other = await h.send("normal")
            while (await h.run_for(other, "normal"))["status"] != "completed":
                assert time.monotonic() < deadline, "the other run did not complete"
                await asyncio.sleep(0.05)
            failed = await h.run_for(blocked, "blocks")
            while failed["status"] != "failed":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
                failed = await h.run_for(blocked, "blocks")
    finally:
        release.set()
    error = failed["error"]
    assert error["name"] == "LoopStalled", error
    assert "test_step_placement.py" in error["message"] and "in blocks" in error["message"], error
    assert "release.wait(30)" in error["stack"], error
