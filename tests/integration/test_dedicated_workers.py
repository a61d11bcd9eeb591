"""Dedicated workers, in process: a worker serves some of its app's functions only
(`functions`, `exclude`), leases and announces only those, and holds at most
`function_concurrency[id]` runs of a function at once while the others run alongside."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import stepwise
from stepwise.engine.leasing import Leased
from stepwise.executor import Job
from stepwise.storage import open_storage
from stepwise.testing import Harness
from stepwise.worker import FunctionSelectionError, Worker


def three_functions(calls: dict[str, int]) -> stepwise.App:
    app = stepwise.App("pools")
    for name in ("heavy", "light", "other"):
        def body(ctx: stepwise.Context, name: str = name) -> str:
            calls[name] = calls.get(name, 0) + 1
            return name

        app.function(id=name, trigger=stepwise.on_event(name), retries=0)(body)
    return app


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, h: Harness) -> None:
    """Poll `check` (waking the worker) until true; fails after 10 s."""
    for _ in range(2000):
        found = check()
        if await found if inspect.isawaitable(found) else found:
            return
        h.worker.notify()
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def spy_leases(worker: Worker) -> list[tuple[list[str], int]]:
    """Record each lease the worker asks for: its functions and how many runs at most."""
    asked: list[tuple[list[str], int]] = []
    lease_runs = worker.engine.lease_runs

    async def spy(app_id: str, functions: list[str], owner: str, limit: int,
                  lease_ms: int) -> Leased:
        asked.append((list(functions), limit))
        return await lease_runs(app_id, functions, owner, limit, lease_ms)

    worker.engine.lease_runs = spy  # type: ignore[method-assign]
    return asked


def test_what_does_not_fit_the_app_is_a_value_error(tmp_path: Path) -> None:
    app = three_functions({})
    storage = open_storage(f"sqlite:///{tmp_path / 'unused.db'}")  # never opened

    def error(**options: Any) -> str:
        with pytest.raises(ValueError) as raised:
            Worker(app, storage, **options)
        assert isinstance(raised.value, FunctionSelectionError)
        return str(raised.value)

    for option, value in (("functions", ["heavy", "nope"]), ("exclude", ["nope"]),
                          ("function_concurrency", {"nope": 1, "heavy": 1})):
        message = error(**{option: value})
        assert message.startswith(f"{option}: unknown function 'nope'"), message
        assert "app 'pools' has: heavy, light, other" in message
        assert "'heavy'" not in message.split("(")[0]  # only the unknown ones are named
    assert "'nope', 'zap'" in error(exclude=["zap", "nope"])
    assert "names no function" in error(functions=[])
    assert "serve nothing" in error(functions=["heavy"], exclude=["heavy"])
    assert "serve nothing" in error(exclude=["heavy", "light", "other"])
    for limit in (0, -1, True, 1.5):
        assert "positive integer" in error(function_concurrency={"heavy": limit})
    assert "not served" in error(exclude=["heavy"], function_concurrency={"heavy": 1})
    with pytest.raises(TypeError, match="not one string"):
        Worker(app, storage, functions="heavy")

    assert Worker(app, storage).functions == ["heavy", "light", "other"]
    chosen = Worker(app, storage, functions=["other", "heavy"], exclude=["other"],
                    function_concurrency={"heavy": 2})
    assert chosen.functions == ["heavy"] and chosen.function_concurrency == {"heavy": 2}


async def test_an_excluded_function_stays_queued_for_a_worker_that_serves_it(db: str) -> None:
    calls: dict[str, int] = {}
    app = three_functions(calls)

    async with Harness(app, db, exclude=["heavy"]) as light:
        asked = spy_leases(light.worker)
        heavy_event = await light.send("heavy")
        for name in ("light", "other"):
            for _ in range(3):
                await light.send(name)

        async def others_done() -> bool:
            runs = await light.runs()
            return sum(r["status"] == "completed" for r in runs) == 6

        await until(others_done, "the light runs", light)
        seen = light.worker.activity
        await until(lambda: light.worker.activity >= seen + 3,
                    "the worker to lease again", light)  # with the heavy run long queued
        [heavy] = await light.runs(function="heavy")
        assert heavy["status"] == "queued" and "heavy" not in calls
        assert calls == {"light": 3, "other": 3}
        assert asked and all(functions == ["light", "other"] for functions, _ in asked)

        # The workers view and API say what it serves, and that nobody serves `heavy`.
        listing = (await light.http.get("/api/v1/workers")).json()
        [me] = [w for w in listing["workers"] if w["id"] == light.worker.id]
        assert me["functions"] == ["light", "other"] and me["live"]
        assert [(u["function_id"], u["queued"]) for u in listing["unserved"]] == [("heavy", 1)]

        async with Harness(app, light.storage, clock=light.clock,
                           functions=["heavy"]) as dedicated:
            run = await dedicated.run_for(heavy_event, "heavy")

            async def heavy_done() -> bool:
                return (await dedicated.run(run["id"]))["status"] == "completed"

            await until(heavy_done, "the heavy run", dedicated)
            _, unserved = await dedicated.engine.workers()
            assert unserved == []
    assert calls == {"heavy": 1, "light": 3, "other": 3}


async def test_a_run_leased_for_a_function_not_served_is_handed_back(db: str) -> None:
    calls: dict[str, int] = {}
    app = three_functions(calls)
    async with Harness(app, db, functions=["light"]) as h:
        await h.send("heavy")
        # Leased as if by this worker (say, by a version of it that served `heavy`).
        found = await h.engine.lease_runs(app.id, ["heavy"], h.worker.id, 1, 60_000)
        [state] = found.states
        now = time.monotonic()
        await h.worker._execution(Job(state, now, now + 60, 20))
        [run] = await h.runs(function="heavy")
        assert run["status"] == "queued" and "heavy" not in calls  # back, at once
        again = await h.engine.lease_runs(app.id, ["heavy"], "another-worker", 1, 60_000)
        assert [s.run["id"] for s in again.states] == [run["id"]]


async def test_a_function_limit_holds_one_run_at_a_time_beside_the_others(db: str) -> None:
    app = stepwise.App("limited")
    release_g = asyncio.Event()
    g_active = 0
    f_spans: list[tuple[float, float]] = []
    f_beside_g: list[int] = []  # how many g runs executed during each f run
    f_held: list[int] = []  # the f runs the worker held (executing or leased ahead), seen by f
    harness: list[Harness] = []

    @app.function(id="g", trigger=stepwise.on_event("g"), retries=0)
    async def g(ctx: stepwise.Context) -> None:
        nonlocal g_active
        g_active += 1
        try:
            await release_g.wait()
        finally:
            g_active -= 1

    @app.function(id="f", trigger=stepwise.on_event("f"), retries=0)
    async def f(ctx: stepwise.Context) -> int:
        began = time.monotonic()
        worker = harness[0].worker
        f_held.append(sum(job.state.run["function_id"] == "f"
                          for job in [*worker._jobs.values(), *worker._prefetched]))
        f_beside_g.append(g_active)
        await asyncio.sleep(0.01)  # short: the worker leases ahead (but not past the limit)
        f_spans.append((began, time.monotonic()))
        return int(ctx.event.data["n"])

    async with Harness(app, db, concurrency=10, function_concurrency={"f": 1}) as h:
        harness.append(h)
        asked = spy_leases(h.worker)
        for _ in range(4):
            await h.send("g")
        await until(lambda: g_active == 4, "the g runs to start", h)
        for n in range(6):  # six free slots: without the limit, they would all run at once
            await h.send("f", {"n": n})

        async def f_done() -> bool:
            runs = await h.runs(function="f")
            return len(runs) == 6 and {r["status"] for r in runs} == {"completed"}

        await until(f_done, "the f runs", h)
        release_g.set()

        async def g_done() -> bool:
            return {r["status"] for r in await h.runs(function="g")} == {"completed"}

        await until(g_done, "the g runs", h)
        outputs = sorted(r["output"] for r in await h.runs(function="f"))

    assert outputs == list(range(6))
    spans = sorted(f_spans)
    assert len(spans) == 6
    for (_, ended), (began, _) in itertools.pairwise(spans):
        assert began >= ended, f"two runs of f overlapped: {spans}"
    assert f_held == [1] * 6  # never a second f held ahead either
    assert f_beside_g == [4] * 6  # every f ran while the four g runs executed
    assert all(limit == 1 for functions, limit in asked if functions == ["f"])
    assert all(functions in (["f"], ["g"]) for functions, _ in asked)
