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


async def until(h: Harness, event_id: str, function_id: str, status: str,
                what: str = "the run", seconds: float = 10) -> dict[str, Any]:
    """The run of `function_id` for `event_id`, once its status is `status` (real time: these
    tests run code on real threads and loops)."""
    deadline = time.monotonic() + seconds
    while (run := await h.run_for(event_id, function_id))["status"] != status:
        assert time.monotonic() < deadline, f"{what} is {run['status']}, not {status}"
        await asyncio.sleep(0.05)
    return run


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
            await until(h, blocked, "blocks", "running")
            other = await h.send("normal")
            await until(h, other, "normal", "completed", "the other run", seconds=5)
            failed = await until(h, blocked, "blocks", "failed", seconds=5)
    finally:
        release.set()
    error = failed["error"]
    assert error["name"] == "LoopStalled", error
    assert "test_step_placement.py" in error["message"] and "in blocks" in error["message"], error
    assert "release.wait(30)" in error["stack"], error


async def test_process_steps_run_in_children_and_a_dead_child_fails_only_its_attempt(
        db: str) -> None:
    """`executor="process"`: plain step code runs in a child (arguments and result crossing
    as JSON); a child that exits fails that attempt (retried, then the run fails naming the
    cause), a lambda is refused with a message that says what to do, and the worker goes on."""
    import os

    from tests.integration import process_steps as steps

    app = stepwise.App("t")

    @app.function(id="heavy", trigger=stepwise.on_event("heavy"), retries=0, executor="process")
    async def heavy(ctx: stepwise.Context) -> dict[str, Any]:
        child = await ctx.step.run("pid", steps.pid)
        total = await ctx.step.run("add", steps.add, [1, "é"], b=[{"b": 2}])
        here = await ctx.step.run(stepwise.StepOptions("here", executor="thread"), steps.pid)
        return {"child": child, "total": total, "here": here}

    @app.function(id="dies", trigger=stepwise.on_event("dies"), retries=1, executor="process")
    def dies(ctx: stepwise.Context) -> None:
        ctx.step.run("exit", steps.exit_1)

    @app.function(id="lambda", trigger=stepwise.on_event("lambda"), retries=3)
    async def closure(ctx: stepwise.Context) -> None:
        await ctx.step.run(stepwise.StepOptions("inline", executor="process"), lambda: 1)

    async with Harness(app, db) as h:
        ok = await h.send("heavy")
        died = await h.send("dies")
        refused = await h.send("lambda")
        await h.settle()
        run = await h.run_for(ok, "heavy")
        dead = await h.run_for(died, "dies")
        closure_run = await h.run_for(refused, "lambda")
    assert run["status"] == "completed", run["error"]
    out = run["output"]
    assert out["child"] != os.getpid() and out["here"] == os.getpid(), out
    assert out["total"] == [1, "é", {"b": 2}]
    assert dead["status"] == "failed"
    assert [f["error"]["name"] for f in dead["failures"]] == ["ChildDied", "ChildDied"]
    assert "exited with status 1" in dead["error"]["message"], dead["error"]
    assert closure_run["status"] == "failed" and closure_run["steps"][0]["attempts"] == 1
    assert "module-level function" in closure_run["error"]["message"], closure_run["error"]


async def test_a_process_step_past_its_attempt_timeout_is_killed(db: str) -> None:
    """Unlike a thread, a child process can be stopped: the overrunning attempt fails with
    AttemptTimeout and the child running it is gone."""
    from datetime import timedelta

    import psutil  # type: ignore[import-untyped, unused-ignore]
    from tests.integration import process_steps as steps

    app = stepwise.App("t")

    @app.function(id="slow", trigger=stepwise.on_event("slow"), retries=0, executor="process",
                  attempt_timeout=timedelta(seconds=1))
    async def slow(ctx: stepwise.Context) -> None:
        await ctx.step.run("sleep", steps.sleep_long, 60)

    async with Harness(app, db) as h:
        event_id = await h.send("slow")
        deadline = time.monotonic() + 30
        children: list[int] = []
        while not children:  # the child that runs the step
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            pool = h.worker.executor._processes  # type: ignore[attr-defined]
            children = list(pool.pids) if pool is not None else []
        run = await until(h, event_id, "slow", "failed")

        def alive(pid: int) -> bool:
            try:
                return bool(psutil.Process(pid).status() != "zombie")
            except psutil.NoSuchProcess:  # gone, even between two looks at it
                return False
        while any(alive(p) for p in children):
            assert time.monotonic() < deadline, "the child still runs the step"
            await asyncio.sleep(0.05)
    assert run["error"]["name"] == "AttemptTimeout", run["error"]
    assert "step 'sleep' ran longer than" in run["error"]["message"]


async def test_a_sync_function_runs_while_async_code_holds_the_user_loop(db: str) -> None:
    """Sync functions do not go through the user loop at all: one completes while async code
    holds that loop (the stall bound is far away here)."""
    app = stepwise.App("t")
    release = threading.Event()

    @app.function(id="blocks", trigger=stepwise.on_event("block"), retries=0)
    async def blocks(ctx: stepwise.Context) -> None:
        release.wait(30)

    @app.function(id="plain", trigger=stepwise.on_event("plain"), retries=0)
    def plain(ctx: stepwise.Context) -> str:
        return str(ctx.step.run("work", lambda: "done"))

    try:
        async with Harness(app, db, isolate=True, loop_stall_s=60) as h:
            blocked = await h.send("block")
            await until(h, blocked, "blocks", "running")
            other = await h.send("plain")
            run = await until(h, other, "plain", "completed", "the sync run (waiting for the "
                              "user loop?)", seconds=5)
            assert (await h.run_for(blocked, "blocks"))["status"] == "running"
            assert run["output"] == "done"
    finally:
        release.set()
