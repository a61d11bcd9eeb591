"""Leasing ahead: a worker whose executions are short leases more runs than it has free
slots and starts each the moment a slot frees; it never runs more than its concurrency,
and runs it holds ahead go back to the queue when it stops or holds them too long."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepwise
import stepwise.worker
from stepwise.testing import Harness


def gated_app(gate: asyncio.Event, seen: dict[str, int]) -> stepwise.App:
    """`job` runs at once, unless its event asks it to wait for `gate`."""
    app = stepwise.App("ahead")

    @app.function(id="job", trigger=stepwise.on_event("job"), retries=0)
    async def job(ctx: stepwise.Context) -> int:
        seen["active"] += 1
        seen["most_active"] = max(seen["most_active"], seen["active"])
        try:
            if ctx.event.data.get("wait"):
                await gate.wait()
            return int(ctx.event.data["n"])
        finally:
            seen["active"] -= 1

    return app


async def wait_until_held_ahead(h: Harness, count: int) -> None:
    for _ in range(2000):
        if len(h.worker._prefetched) >= count:
            return
        h.worker.notify()
        await asyncio.sleep(0.005)
    raise AssertionError(f"the worker never held {count} runs ahead")


async def test_short_executions_lease_ahead_but_never_exceed_concurrency(db: str) -> None:
    gate = asyncio.Event()
    seen = {"active": 0, "most_active": 0}
    app = gated_app(gate, seen)
    most_ahead = 0

    async with Harness(app, db, concurrency=2) as h:
        for n in range(4):  # short executions first: the worker learns they are short
            await h.send("job", {"n": n})
        await h.settle(advance=False)
        assert h.worker._execution_s < stepwise.worker.PREFETCH_BELOW_S
        await h.send("job", {"n": 100, "wait": True})
        await h.send("job", {"n": 101, "wait": True})
        for n in range(4, 30):
            await h.send("job", {"n": n})
        await wait_until_held_ahead(h, 2)  # both slots wait on the gate; two runs ahead
        most_ahead = len(h.worker._prefetched)
        assert seen["active"] == 2
        gate.set()
        await h.settle(advance=False)
        runs = await h.runs(function="job")

    assert most_ahead == 2  # ahead: as many as the worker's concurrency, no more
    assert seen["most_active"] == 2
    assert len(runs) == 32 and {r["status"] for r in runs} == {"completed"}


async def test_stopping_hands_back_the_runs_leased_ahead(db: str) -> None:
    gate = asyncio.Event()
    seen = {"active": 0, "most_active": 0}
    app = gated_app(gate, seen)

    async with Harness(app, db, concurrency=1) as h1:
        h1.worker._execution_s = 0.0  # as if its executions had been short
        await h1.send("job", {"n": 0, "wait": True})
        await h1.send("job", {"n": 1})
        await wait_until_held_ahead(h1, 1)
        await h1.worker.stop(grace=0.01)
        runs = await h1.runs(function="job")
        assert {r["status"] for r in runs} == {"queued"}  # both handed back, none held

        gate.set()
        async with Harness(app, h1.storage, concurrency=1) as h2:
            await h2.settle(advance=False)
            runs = await h2.runs(function="job")
    assert sorted(r["output"] for r in runs) == [0, 1]


async def test_a_run_held_ahead_too_long_goes_to_another_worker(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stepwise.worker, "PREFETCH_HOLD_S", 0.0)
    monkeypatch.setattr(stepwise.worker, "WATCH_INTERVAL_S", 0.01)
    gate = asyncio.Event()
    seen = {"active": 0, "most_active": 0}
    app = gated_app(gate, seen)

    async with Harness(app, db, concurrency=1) as h1:
        h1.worker._execution_s = 0.0
        first = await h1.send("job", {"n": 0, "wait": True})
        await h1.send("job", {"n": 1})
        await wait_until_held_ahead(h1, 1)
        # h1's only slot waits on the gate: run 1 completes only if h1 hands it back.
        async with Harness(app, h1.storage, concurrency=1) as h2:
            for _ in range(2000):
                done = [r for r in await h2.runs(function="job") if r["status"] == "completed"]
                if done:
                    break
                h2.worker.notify()
                await asyncio.sleep(0.005)
            assert [r["output"] for r in done] == [1]
            assert (await h1.run_for(first, "job"))["status"] == "running"
            gate.set()
            await h1.settle(advance=False)
            await h2.settle(advance=False)
            runs = await h1.runs(function="job")
    assert sorted(r["output"] for r in runs) == [0, 1]


async def test_runs_of_a_lease_on_its_way_when_the_worker_stops_are_handed_back(
        db: str) -> None:
    gate = asyncio.Event()
    seen = {"active": 0, "most_active": 0}
    app = gated_app(gate, seen)

    async with Harness(app, db, concurrency=1) as h:
        h.worker._execution_s = 0.0
        lease_runs = h.worker.engine.lease_runs
        taken, answer = asyncio.Event(), asyncio.Event()

        async def slow_lease(*args: Any, **kwargs: Any) -> Any:
            found = await lease_runs(*args, **kwargs)  # committed: the runs are ours...
            if found.states:
                taken.set()
                await answer.wait()  # ...but the worker has not heard back yet
            return found

        h.worker.engine.lease_runs = slow_lease  # type: ignore[method-assign]
        await h.send("job", {"n": 0})
        await h.send("job", {"n": 1})
        h.worker.notify()
        await asyncio.wait_for(taken.wait(), 10)
        stopping = asyncio.create_task(h.worker.stop(grace=5))
        await asyncio.sleep(0.01)
        answer.set()
        await stopping
        runs = await h.runs(function="job")
    assert len(runs) == 2 and {r["status"] for r in runs} == {"queued"}
    assert seen["most_active"] == 0  # leased while stopping: none started
