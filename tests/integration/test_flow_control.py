"""Flow control, enforced by the engine from stored definitions, on both backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import stepwise
from stepwise.errors import DefinitionError
from stepwise.testing import Harness

MIN = 60.0


class Gate:
    """A step body that holds its run inside a step until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def hold(self) -> None:
        self.entered.set()
        await self.opened.wait()


async def test_throttle_queues_runs_over_the_limit(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    started: list[float] = []

    @app.function(id="f", trigger=stepwise.on_event("go"),
                  throttle=stepwise.Throttle(limit=3, period=timedelta(minutes=1)))
    async def f(ctx: stepwise.Context) -> None:
        started.append(clock.now() - t0)

    t0 = clock.now()
    async with Harness(app, db, clock=clock) as h:
        await h.http.post("/api/v1/events", json=[{"name": "go"} for _ in range(10)])
        await h.settle(advance=False)
        assert len(started) == 3
        await h.settle()
        runs = await h.runs(function="f", limit=100)
    # Inngest's pace: the limit at once, then one every period / limit (20 s).
    assert sorted(started) == [0, 0, 0, 20, 40, 60, 80, 100, 120, 140]
    assert {r["status"] for r in runs} == {"completed"} and len(runs) == 10


async def test_throttle_burst_starts_limit_plus_burst_at_once_then_keeps_the_pace(
        db: str) -> None:
    """limit 2 per minute with a burst of 3 (Inngest's GCRA): five start at once, then one
    every 30 s; after a quiet spell the burst is whole again; per key."""
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    started: list[tuple[str, float]] = []

    @app.function(id="f", trigger=stepwise.on_event("go"),
                  throttle=stepwise.Throttle(limit=2, period=timedelta(minutes=1), burst=3,
                                             key="event.data.account"))
    async def f(ctx: stepwise.Context) -> None:
        started.append((ctx.event.data["account"], clock.now() - t0))

    t0 = clock.now()
    async with Harness(app, db, clock=clock) as h:
        await h.http.post("/api/v1/events", json=[{"name": "go", "data": {"account": "a"}}] * 7)
        await h.http.post("/api/v1/events", json=[{"name": "go", "data": {"account": "b"}}])
        await h.settle(advance=False)
        assert sorted(started) == [("a", 0)] * 5 + [("b", 0)]
        await h.settle()
        assert sorted(t for k, t in started if k == "a") == [0, 0, 0, 0, 0, 30, 60]
        # Quiet until the tolerance (the burst and the limit, 150 s) has passed since the
        # last start's slot (60 s, the next one due at 90 s): the burst is whole again.
        clock.set(t0 + 90 + 150)
        started.clear()
        await h.http.post("/api/v1/events", json=[{"name": "go", "data": {"account": "a"}}] * 6)
        await h.settle(advance=False)
        assert len(started) == 5
        await h.settle()
    assert [t for _, t in started] == [240] * 5 + [270]


def test_throttle_burst_is_validated() -> None:
    with pytest.raises(DefinitionError, match="burst must be a non-negative integer"):
        stepwise.Throttle(limit=1, period=timedelta(seconds=1), burst=-1)
    throttle = stepwise.Throttle(limit=1, period=timedelta(seconds=1), burst=4)
    assert stepwise.Throttle.from_json(throttle.to_json()) == throttle
    assert stepwise.Throttle.from_json({"limit": 1, "period_ms": 1000}).burst == 0


async def test_rate_limit_skips_runs_over_the_limit(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()

    @app.function(id="f", trigger=stepwise.on_event("go"),
                  rate_limit=stepwise.RateLimit(limit=3, period=timedelta(minutes=1),
                                                key="event.data.user"))
    async def f(ctx: stepwise.Context) -> str:
        return str(ctx.event.data["user"])

    async with Harness(app, db, clock=clock) as h:
        await h.http.post("/api/v1/events", json=[{"name": "go", "data": {"user": "a"}}] * 10)
        await h.http.post("/api/v1/events", json=[{"name": "go", "data": {"user": "b"}}])
        await h.settle(advance=False)
        clock.advance(MIN)
        await h.http.post("/api/v1/events", json=[{"name": "go", "data": {"user": "a"}}] * 2)
        await h.settle(advance=False)
        runs = await h.runs(function="f", limit=100)
    by_status: dict[str, int] = {}
    for run in runs:
        by_status[run["status"]] = by_status.get(run["status"], 0) + 1
    assert by_status == {"completed": 6, "skipped": 7}
    skipped = next(r for r in runs if r["status"] == "skipped")
    assert skipped["error"]["name"] == "RateLimited"
    assert "rate limit of 3 runs per 60 s" in skipped["error"]["message"]


async def test_debounce_collapses_events_into_one_run_with_the_last(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    seen: list[tuple[str, int]] = []

    @app.function(id="f", trigger=stepwise.on_event("typed"),
                  debounce=stepwise.Debounce(period=timedelta(seconds=10),
                                             key="event.data.doc"))
    async def f(ctx: stepwise.Context) -> None:
        seen.append((ctx.event.data["doc"], ctx.event.data["n"]))

    async with Harness(app, db, clock=clock) as h:
        for n in range(10):
            await h.send("typed", {"doc": "a", "n": n})
            clock.advance(2)
            await h.settle(advance=False)
        await h.send("typed", {"doc": "b", "n": 0})
        assert seen == []
        await h.settle()
        runs = await h.runs(function="f")
    assert sorted(seen) == [("a", 9), ("b", 0)]
    assert len(runs) == 2


async def test_debounce_timeout_caps_the_delay(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    started: list[float] = []

    @app.function(id="f", trigger=stepwise.on_event("typed"),
                  debounce=stepwise.Debounce(period=timedelta(seconds=10),
                                             timeout=timedelta(seconds=30)))
    async def f(ctx: stepwise.Context) -> None:
        started.append(clock.now() - t0)

    t0 = clock.now()
    async with Harness(app, db, clock=clock) as h:
        for _ in range(12):  # one event every 5 s for a minute: never 10 s of quiet
            await h.send("typed", {})
            clock.advance(5)
            await h.settle(advance=False)
        await h.settle()
    assert started[0] == 30


async def test_batch_of_25_events_runs_as_10_10_5(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    batches: list[list[int]] = []

    @app.function(id="f", trigger=stepwise.on_event("item"),
                  batch=stepwise.Batch(max_size=10, timeout=timedelta(minutes=1)))
    async def f(ctx: stepwise.Context) -> int:
        batches.append([e.data["i"] for e in ctx.events])
        return len(ctx.events)

    async with Harness(app, db, clock=clock) as h:
        await h.http.post("/api/v1/events", json=[{"name": "item", "data": {"i": i}}
                                                   for i in range(25)])
        await h.settle(advance=False)
        assert [len(b) for b in batches] == [10, 10]
        await h.settle()
    assert sorted(len(b) for b in batches) == [5, 10, 10]
    assert sorted(i for b in batches for i in b) == list(range(25))


async def test_priority_orders_leases_without_starving(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    order: list[str] = []
    gate = Gate()

    @app.function(id="f", trigger=stepwise.on_event("job"), concurrency=1,
                  priority=stepwise.Priority(run="event.data.plan == 'pro' ? 60 : 0"))
    async def f(ctx: stepwise.Context) -> None:
        if ctx.event.data["name"] == "blocker":
            await ctx.step.run("hold", gate.hold)
        order.append(ctx.event.data["name"])

    async with Harness(app, db, clock=clock) as h:
        await h.send("job", {"name": "blocker", "plan": "free"})
        await asyncio.wait_for(gate.entered.wait(), 10)
        await h.send("job", {"name": "free-0s", "plan": "free"})
        clock.advance(30)
        await h.send("job", {"name": "pro-30s", "plan": "pro"})
        clock.advance(10)
        await h.send("job", {"name": "free-40s", "plan": "free"})
        clock.advance(80)
        await h.send("job", {"name": "pro-120s", "plan": "pro"})
        gate.opened.set()
        await h.settle()
    # pro-30s ranks at -30 s, free-0s at 0, free-40s at 40, pro-120s at 60.
    assert order == ["blocker", "pro-30s", "free-0s", "free-40s", "pro-120s"]


async def test_idempotency_key_gives_one_run_per_day(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()

    @app.function(id="f", trigger=stepwise.on_event("order"),
                  idempotency="event.data.order_id")
    async def f(ctx: stepwise.Context) -> Any:
        return ctx.event.data

    async with Harness(app, db, clock=clock) as h:
        for n in range(3):
            await h.send("order", {"order_id": 1, "n": n})
        await h.send("order", {"order_id": 2, "n": 0})
        await h.settle(advance=False)
        assert len(await h.runs(function="f")) == 2
        clock.advance(24 * 3600 + 1)
        await h.send("order", {"order_id": 1, "n": 9})
        await h.settle(advance=False)
        runs = await h.runs(function="f")
    assert sorted((r["output"]["order_id"], r["output"]["n"]) for r in runs) == [
        (1, 0), (1, 9), (2, 0)]


async def test_cancel_on_event_and_api_cancel_of_sleeping_and_running_runs(db: str) -> None:
    app = stepwise.App("t")
    gate = Gate()
    after: list[str] = []

    @app.function(id="drip", trigger=stepwise.on_event("user.signup"),
                  cancel_on=[stepwise.CancelOn(event="user.deleted", match="data.user_id")])
    async def drip(ctx: stepwise.Context) -> None:
        await ctx.step.sleep("wait", timedelta(days=1))
        after.append("drip")

    @app.function(id="worker", trigger=stepwise.on_event("work"))
    async def work(ctx: stepwise.Context) -> None:
        await ctx.step.run("hold", gate.hold)
        await ctx.step.run("next", lambda: after.append("next"))

    async with Harness(app, db) as h:
        first = await h.send("user.signup", {"user_id": 1})
        second = await h.send("user.signup", {"user_id": 2})
        third = await h.send("user.signup", {"user_id": 3})
        await h.settle(advance=False)
        await h.send("user.deleted", {"user_id": 9})
        await h.send("user.deleted", {"user_id": 1})
        await h.settle(advance=False)
        assert (await h.run_for(first, "drip"))["status"] == "cancelled"
        assert (await h.run_for(second, "drip"))["status"] == "sleeping"

        sleeping = await h.run_for(third, "drip")
        assert (await h.http.post(f"/api/v1/runs/{sleeping['id']}/cancel")).status_code == 200

        running_event = await h.send("work")
        await asyncio.wait_for(gate.entered.wait(), 10)
        running = await h.run_for(running_event, "worker")
        assert running["status"] == "running"
        assert (await h.http.post(f"/api/v1/runs/{running['id']}/cancel")).status_code == 200
        gate.opened.set()
        await h.settle()
        assert (await h.run(running["id"]))["status"] == "cancelled"
        assert (await h.run_for(third, "drip"))["status"] == "cancelled"
        assert (await h.run_for(second, "drip"))["status"] == "completed"
    assert after == ["drip"]  # only user 2's run went on; the running one stopped at its step


async def test_start_and_finish_timeouts_cancel_runs(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    gate = Gate()

    @app.function(id="slow-start", trigger=stepwise.on_event("a"), concurrency=1,
                  timeouts=stepwise.Timeouts(start=timedelta(minutes=1)))
    async def slow_start(ctx: stepwise.Context) -> None:
        if ctx.event.data.get("block"):
            await ctx.step.run("hold", gate.hold)

    @app.function(id="long", trigger=stepwise.on_event("b"),
                  timeouts=stepwise.Timeouts(finish=timedelta(hours=1)))
    async def long(ctx: stepwise.Context) -> None:
        await ctx.step.sleep("nap", timedelta(hours=2))

    async with Harness(app, db, clock=clock) as h:
        blocker = await h.send("a", {"block": True})
        await asyncio.wait_for(gate.entered.wait(), 10)
        starved = await h.send("a", {})
        sleeper = await h.send("b", {})
        clock.advance(61)
        late = await h.run_for(starved, "slow-start")
        late = await h.wait_for_status(late["id"], "cancelled")
        assert "start timeout" in late["error"]["message"]
        gate.opened.set()
        await h.settle()
        assert (await h.run_for(blocker, "slow-start"))["status"] == "completed"
        long_run = await h.run_for(sleeper, "long")
    assert long_run["status"] == "cancelled" and "finish timeout" in long_run["error"]["message"]


async def test_bulk_cancel_by_function_and_time_range(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock(start=1_800_000_000)

    @app.function(id="nap", trigger=stepwise.on_event("go"))
    async def nap(ctx: stepwise.Context) -> None:
        await ctx.step.sleep("zz", timedelta(days=1))

    async with Harness(app, db, clock=clock) as h:
        await h.send("go")
        clock.advance(3600)
        await h.send("go")
        await h.send("go")
        await h.settle(advance=False)
        response = await h.http.post("/api/v1/functions/nap/cancel", json={
            "started_after": "2027-01-15T08:30:00Z"})
        assert response.status_code == 200, response.text
        assert response.json() == {"cancelled": 2}
        bad = await h.http.post("/api/v1/functions/nap/cancel", json={"started_after": "x"})
        assert bad.status_code == 400 and "started_after" in bad.json()["error"]
        missing = await h.http.post("/api/v1/functions/nope/cancel", json={})
        assert missing.status_code == 404
        statuses = sorted(r["status"] for r in await h.runs(function="nap"))
    assert statuses == ["cancelled", "cancelled", "sleeping"]


@pytest.mark.parametrize(("options", "message"), [
    ({"concurrency": -1}, "concurrency must be a positive integer"),
    ({"priority": "high"}, "must be a stepwise.Priority"),
    ({"throttle": "3/min"}, "must be a stepwise.Throttle"),
    ({"idempotency": "event.data.id ==="}, "invalid expression"),
    ({"batch": stepwise.Batch(10, timedelta(seconds=1)), "idempotency": "event.id"},
     "cannot be combined"),
    ({"batch": stepwise.Batch(10, timedelta(seconds=1)),
      "singleton": stepwise.Singleton("skip")}, "singleton cannot be combined with batch"),
    ({"singleton": "skip"}, "must be a stepwise.Singleton"),
])
def test_flow_options_are_validated_at_definition(options: dict[str, Any],
                                                  message: str) -> None:
    app = stepwise.App("t")
    with pytest.raises(DefinitionError, match=message):
        app.function(id="f", trigger=stepwise.on_event("x"), **options)


def test_flow_value_classes_refuse_bad_values() -> None:
    with pytest.raises(DefinitionError, match="limit must be a positive integer"):
        stepwise.Throttle(limit=0, period=timedelta(seconds=1))
    with pytest.raises(DefinitionError, match="period must be a positive timedelta"):
        stepwise.RateLimit(limit=1, period=timedelta(0))
    with pytest.raises(DefinitionError, match="invalid expression"):
        stepwise.Concurrency(limit=2, key="event.data.")
    with pytest.raises(DefinitionError, match="scope"):
        stepwise.Concurrency(limit=1, key="event.data.x", scope="world")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        stepwise.Debounce(period=timedelta(seconds=1), bogus=1)  # type: ignore[call-arg]
    with pytest.raises(DefinitionError, match="mode must be 'skip' or 'cancel'"):
        stepwise.Singleton("queue")
    with pytest.raises(DefinitionError, match="invalid expression"):
        stepwise.Singleton("skip", key="event.data.")


async def test_invoking_a_rate_limited_function_fails_the_step_at_once(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="target", rate_limit=stepwise.RateLimit(limit=1, period=timedelta(hours=1)))
    async def target(ctx: stepwise.Context) -> str:
        return "done"

    @app.function(id="caller", trigger=stepwise.on_event("go"))
    async def caller(ctx: stepwise.Context) -> list[str]:
        results = []
        for n in range(2):
            try:
                results.append(await ctx.step.invoke(f"call-{n}", function=target))
            except stepwise.StepError as exc:
                results.append(exc.error["message"])
        return results

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle(advance=False)  # no timeout given: nothing to wait for but the results
        run = await h.run_for(event_id, "caller")
    assert run["status"] == "completed"
    assert run["output"][0] == "done"
    assert "over the rate limit" in run["output"][1]


async def test_cancel_on_event_later_in_the_same_batch(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="drip", trigger=stepwise.on_event("user.signup"),
                  cancel_on=stepwise.CancelOn(event="user.deleted", match="data.user_id"))
    async def drip(ctx: stepwise.Context) -> None:
        await ctx.step.sleep("wait", timedelta(days=1))

    async with Harness(app, db) as h:
        response = await h.http.post("/api/v1/events", json=[
            {"name": "user.deleted", "data": {"user_id": 1}},  # before the run: no effect
            {"name": "user.signup", "data": {"user_id": 1}, "id": "signup-1"},
            {"name": "user.deleted", "data": {"user_id": 1}},  # after it: cancels it
        ])
        assert response.status_code == 200
        await h.settle(advance=False)
        run = await h.run_for("signup-1", "drip")
    assert run["status"] == "cancelled"


def singleton_app(mode: str) -> stepwise.App:
    app = stepwise.App("t")

    @app.function(id="sync", trigger=stepwise.on_event("account.sync"),
                  singleton=stepwise.Singleton(mode, key="event.data.account"))
    async def sync(ctx: stepwise.Context) -> Any:
        await ctx.step.sleep("slow-work", timedelta(minutes=5))
        return ctx.event.data["n"]

    @app.function(id="only-big", trigger=stepwise.on_event("order.placed"),
                  singleton=stepwise.Singleton(mode, key="event.data.total > 100"))
    async def only_big(ctx: stepwise.Context) -> Any:
        await ctx.step.sleep("slow-work", timedelta(minutes=5))
        return ctx.event.data["total"]

    return app


async def test_singleton_skip_keeps_one_unfinished_run_per_key(db: str) -> None:
    async with Harness(singleton_app("skip"), db) as h:
        first = await h.send("account.sync", {"account": "a", "n": 1})
        other_key = await h.send("account.sync", {"account": "b", "n": 2})
        await h.settle(advance=False)
        skipped = await h.send("account.sync", {"account": "a", "n": 3})
        await h.settle(advance=False)
        run = await h.run_for(skipped, "sync")
        assert run["status"] == "skipped" and run["error"]["name"] == "SingletonSkipped"
        holder = await h.run_for(first, "sync")
        assert holder["status"] == "sleeping" and holder["id"] in run["error"]["message"]
        assert (await h.run_for(other_key, "sync"))["status"] == "sleeping"
        small = [await h.send("order.placed", {"total": 5}) for _ in range(2)]
        await h.settle(advance=False)  # a key that is false: no singleton, both run
        assert [(await h.run_for(e, "only-big"))["status"] for e in small] == [
            "sleeping", "sleeping"]

        await h.settle()  # the first run ends: the key is free again
        assert (await h.run_for(first, "sync"))["output"] == 1
        after = await h.send("account.sync", {"account": "a", "n": 4})
        await h.settle()
        assert (await h.run_for(after, "sync"))["output"] == 4


async def test_singleton_cancel_replaces_the_unfinished_run(db: str) -> None:
    async with Harness(singleton_app("cancel"), db) as h:
        first = await h.send("account.sync", {"account": "a", "n": 1})
        await h.settle(advance=False)
        second = await h.send("account.sync", {"account": "a", "n": 2})
        await h.settle(advance=False)
        old = await h.run_for(first, "sync")
        assert old["status"] == "cancelled" and "singleton" in old["error"]["message"]
        third = await h.send("account.sync", {"account": "a", "n": 3})
        await h.settle()
        assert (await h.run_for(second, "sync"))["status"] == "cancelled"
        assert (await h.run_for(third, "sync"))["output"] == 3
        fourth = await h.send("account.sync", {"account": "a", "n": 4})  # after the end
        await h.settle()
        assert (await h.run_for(fourth, "sync"))["output"] == 4
        assert (await h.run_for(third, "sync"))["status"] == "completed"


async def test_cancel_on_with_a_timeout_cancels_only_within_it(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="trial", trigger=stepwise.on_event("trial.started"),
                  cancel_on=stepwise.CancelOn(event="trial.converted", match="data.user_id",
                                              timeout=timedelta(hours=1)))
    async def trial(ctx: stepwise.Context) -> str:
        await ctx.step.sleep("remind", timedelta(days=3))
        return "reminded"

    async with Harness(app, db) as h:
        early = await h.send("trial.started", {"user_id": 1})
        late = await h.send("trial.started", {"user_id": 2})
        await h.settle(advance=False)
        h.clock.advance(30 * MIN)
        await h.send("trial.converted", {"user_id": 1})  # within the hour: cancels
        h.clock.advance(60 * MIN)
        await h.send("trial.converted", {"user_id": 2})  # 90 min in: too late
        await h.settle()
        assert (await h.run_for(early, "trial"))["status"] == "cancelled"
        assert (await h.run_for(late, "trial"))["output"] == "reminded"


async def test_batch_if_batches_only_the_events_it_is_true_for(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="import", trigger=stepwise.on_event("row"),
                  batch=stepwise.Batch(3, timedelta(minutes=1), if_="event.data.bulk == true"))
    async def import_rows(ctx: stepwise.Context) -> list[int]:
        return [e.data["n"] for e in ctx.events]

    async with Harness(app, db) as h:
        ids = [await h.send("row", {"n": n, "bulk": n != 2}) for n in range(4)]
        await h.settle(advance=False)  # the lone one runs at once; the batch waits
        alone = await h.run_for(ids[2], "import")
        assert alone["status"] == "completed" and alone["output"] == [2]
        batched = await h.run_for(ids[0], "import")
        assert batched["status"] == "completed" and batched["output"] == [0, 1, 3]  # full
