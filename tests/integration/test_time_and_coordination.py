"""Sleeps, waits for events, invoke, parallel, send_event, cron and future events, on both
backends, on a test clock (nothing here waits for real time)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import stepwise
from stepwise.testing import Harness

DAY = 86400.0


def drip_app(sent: list[tuple[str, str]]) -> stepwise.App:
    app = stepwise.App("drip")

    def email(kind: str, to: str) -> str:
        sent.append((kind, to))
        return kind

    @app.function(id="drip", trigger=stepwise.on_event("user.signup"))
    async def drip(ctx: stepwise.Context) -> dict[str, Any]:
        to = ctx.event.data["email"]
        await ctx.step.run("welcome", email, "welcome", to)
        await ctx.step.sleep("wait-4-days", timedelta(days=4))
        booking = await ctx.step.wait_for_event(
            "await-booking", event="booking.created", match="data.user_id",
            timeout=timedelta(days=4))
        tips = "power-user-tips" if booking is not None else "basic-tips"
        await ctx.step.run("tips", email, tips, to)
        return {"booked": booking is not None,
                "booking": booking.data["booking_id"] if booking else None}

    return app


async def test_drip_campaign_booked_branch(db: str) -> None:
    sent: list[tuple[str, str]] = []
    async with Harness(drip_app(sent), db) as h:
        event_id = await h.send("user.signup", {"user_id": 7, "email": "ada@example.com"})
        await h.settle(advance=False)
        run = await h.run_for(event_id, "drip")
        assert run["status"] == "sleeping" and sent == [("welcome", "ada@example.com")]
        h.clock.advance(4 * DAY - 60)
        await h.settle(advance=False)
        assert (await h.run(run["id"]))["status"] == "sleeping"
        h.clock.advance(60)
        await h.settle(advance=False)
        assert (await h.run(run["id"]))["status"] == "waiting"
        await h.send("booking.created", {"user_id": 8, "booking_id": "other-user"})
        await h.settle(advance=False)
        assert (await h.run(run["id"]))["status"] == "waiting"
        h.clock.advance(DAY)
        await h.send("booking.created", {"user_id": 7, "booking_id": "b-1"})
        await h.settle(advance=False)
        run = await h.run(run["id"])
    assert run["status"] == "completed", run
    assert run["output"] == {"booked": True, "booking": "b-1"}
    assert sent == [("welcome", "ada@example.com"), ("power-user-tips", "ada@example.com")]
    assert [s["id"] for s in run["steps"]] == ["welcome", "wait-4-days", "await-booking", "tips"]


async def test_drip_campaign_timeout_branch(db: str) -> None:
    sent: list[tuple[str, str]] = []
    async with Harness(drip_app(sent), db) as h:
        event_id = await h.send("user.signup", {"user_id": 7, "email": "bob@example.com"})
        await h.settle()  # advances through the sleep and the whole wait
        run = await h.run_for(event_id, "drip")
    assert run["status"] == "completed"
    assert run["output"] == {"booked": False, "booking": None}
    assert sent == [("welcome", "bob@example.com"), ("basic-tips", "bob@example.com")]


async def test_sleeping_run_survives_restart_and_wakes_on_time(db: str) -> None:
    app = stepwise.App("t")
    woke: list[float] = []
    clock = stepwise.ManualClock()

    started = clock.now()
    wake = datetime.fromtimestamp(started + 3600, UTC)

    @app.function(id="nap", trigger=stepwise.on_event("go"))
    def nap(ctx: stepwise.Context) -> str:
        ctx.step.sleep_until("until", wake)
        woke.append(clock.now())
        return "rested"

    async with Harness(app, db, clock=clock) as h:
        event_id = await h.send("go")
        await h.settle(advance=False)
        assert (await h.run_for(event_id, "nap"))["status"] == "sleeping"
    clock.advance(1800)
    async with Harness(app, db, clock=clock) as h:  # a new worker process, same database
        await h.settle(advance=False)
        assert woke == []
        await h.settle()
        run = await h.run_for(event_id, "nap")
    assert run["status"] == "completed" and woke == [started + 3600]


def waiter_app() -> stepwise.App:
    app = stepwise.App("w")

    @app.function(id="waiter", trigger=stepwise.on_event("order.created"))
    async def waiter(ctx: stepwise.Context) -> Any:
        paid = await ctx.step.wait_for_event("paid", event="order.paid", match="data.order",
                                             timeout=timedelta(hours=1))
        return None if paid is None else paid.data

    @app.function(id="big-spender", trigger=stepwise.on_event("cart.opened"))
    async def big(ctx: stepwise.Context) -> Any:
        paid = await ctx.step.wait_for_event(
            "big", event="order.paid", timeout=timedelta(hours=1),
            if_="async.data.amount > event.data.threshold && async.data.user == event.data.user")
        return None if paid is None else paid.data["amount"]

    return app


async def test_wait_for_event_match_no_match_timeout_and_late_arrival(db: str) -> None:
    async with Harness(waiter_app(), db) as h:
        await h.send("order.paid", {"order": 1, "early": True})  # before the wait: not matched
        first = await h.send("order.created", {"order": 1})
        second = await h.send("order.created", {"order": 1})
        other = await h.send("order.created", {"order": 2})
        await h.settle(advance=False)
        for event_id in (first, second, other):
            assert (await h.run_for(event_id, "waiter"))["status"] == "waiting"
        await h.send("order.paid", {"order": 3})  # matches nobody
        await h.send("order.paid", {"order": 1, "n": 1})
        await h.send("order.paid", {"order": 1, "n": 2})  # the first one already took both
        await h.settle(advance=False)
        # One event reached both runs waiting on order 1, once each.
        assert (await h.run_for(first, "waiter"))["output"] == {"order": 1, "n": 1}
        assert (await h.run_for(second, "waiter"))["output"] == {"order": 1, "n": 1}
        assert (await h.run_for(other, "waiter"))["status"] == "waiting"
        await h.settle()  # the clock moves past the timeout
        timed_out = await h.run_for(other, "waiter")
    assert timed_out["status"] == "completed" and timed_out["output"] is None


async def test_wait_for_event_with_an_expression(db: str) -> None:
    async with Harness(waiter_app(), db) as h:
        event_id = await h.send("cart.opened", {"user": "u1", "threshold": 100})
        await h.settle(advance=False)
        await h.send("order.paid", {"user": "u1", "amount": 50})
        await h.send("order.paid", {"user": "u2", "amount": 500})
        await h.send("order.paid", {"user": "u1", "amount": 150})
        await h.settle(advance=False)
        run = await h.run_for(event_id, "big-spender")
    assert run["status"] == "completed" and run["output"] == 150


async def test_bad_wait_expression_fails_the_run_clearly(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> None:
        await ctx.step.wait_for_event("w", event="x", timeout=timedelta(hours=1),
                                      if_="async.data.a ==")

    @app.function(id="g", trigger=stepwise.on_event("go"))
    async def g(ctx: stepwise.Context) -> None:
        await ctx.step.wait_for_event("w", event="x", timeout=timedelta(hours=1),
                                      match="data.missing")

    async with Harness(app, db) as h:
        event_id = await h.send("go", {})
        await h.settle()
        bad_expr = await h.run_for(event_id, "f")
        bad_match = await h.run_for(event_id, "g")
    assert bad_expr["status"] == "failed" and "invalid expression" in bad_expr["error"]["message"]
    assert bad_match["status"] == "failed"
    assert "has no data.missing" in bad_match["error"]["message"]


def invoke_app(calls: Counter[str]) -> stepwise.App:
    app = stepwise.App("inv")

    @app.function(id="price", retries=0)
    async def price(ctx: stepwise.Context) -> int:
        calls["price"] += 1
        if ctx.event.data["sku"] == "bad":
            raise stepwise.NonRetriableError("unknown sku")
        if ctx.event.data["sku"] == "slow":
            await ctx.step.sleep("slow", timedelta(hours=2))
        return int(await ctx.step.run("lookup", lambda: 42))

    @app.function(id="checkout", trigger=stepwise.on_event("checkout"), retries=0)
    async def checkout(ctx: stepwise.Context) -> Any:
        try:
            amount = await ctx.step.invoke("price", function=price,
                                           data={"sku": ctx.event.data["sku"]},
                                           timeout=timedelta(hours=1))
        except stepwise.StepError as exc:
            return {"error": exc.error["message"]}
        total = await ctx.step.run("total", lambda: amount * 2)
        return {"total": total}

    return app


async def test_invoke_success_failure_and_timeout(db: str) -> None:
    calls: Counter[str] = Counter()
    async with Harness(invoke_app(calls), db) as h:
        ok = await h.send("checkout", {"sku": "ok"})
        bad = await h.send("checkout", {"sku": "bad"})
        slow = await h.send("checkout", {"sku": "slow"})
        await h.settle(advance=False)
        assert (await h.run_for(ok, "checkout"))["output"] == {"total": 84}
        assert (await h.run_for(bad, "checkout"))["output"] == {"error": "unknown sku"}
        assert (await h.run_for(slow, "checkout"))["status"] == "waiting"
        await h.settle()
        slow_run = await h.run_for(slow, "checkout")
        children = await h.runs(function="price")
    assert "did not finish before the timeout" in slow_run["output"]["error"]
    assert sorted(c["status"] for c in children) == ["completed", "completed", "failed"]
    assert calls["price"] == 3 + 1  # the slow child ran again after its sleep


async def test_parallel_branches_with_one_flaky_branch_retried_alone(db: str) -> None:
    app = stepwise.App("t")
    calls: Counter[str] = Counter()

    def work(name: str) -> str:
        calls[name] += 1
        if name == "flaky" and calls[name] < 3:
            raise ConnectionError("flaky branch")
        return name.upper()

    @app.function(id="fan", trigger=stepwise.on_event("go"), retries=3)
    async def fan(ctx: stepwise.Context) -> list[Any]:
        async def two_steps() -> str:
            a = await ctx.step.run("chain-a", work, "chain-a")
            b = await ctx.step.run("chain-b", work, "chain-b")
            return f"{a}+{b}"

        results = await ctx.step.parallel(
            ctx.step.run("stable", work, "stable"),
            ctx.step.run("flaky", work, "flaky"),
            two_steps,
        )
        done = await ctx.step.run("after", work, "after")
        return [*results, done]

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "fan")
    assert run["status"] == "completed", run
    assert run["output"] == ["STABLE", "FLAKY", "CHAIN-A+CHAIN-B", "AFTER"]
    assert calls == {"stable": 1, "flaky": 3, "chain-a": 1, "chain-b": 1, "after": 1}


async def test_sync_parallel_and_gathered_steps(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="sync-fan", trigger=stepwise.on_event("go"))
    def sync_fan(ctx: stepwise.Context) -> list[Any]:
        return ctx.step.parallel(lambda: ctx.step.run("x", lambda: 1),
                                 lambda: ctx.step.run("y", lambda: 2))

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "sync-fan")
    assert run["status"] == "completed" and run["output"] == [1, 2]


async def test_send_event_is_sent_once_despite_later_retries(db: str) -> None:
    app = stepwise.App("t")
    received: list[Any] = []
    flaky = Counter[str]()

    def later() -> str:
        flaky["n"] += 1
        if flaky["n"] < 3:
            raise RuntimeError("later step fails")
        return "ok"

    @app.function(id="sender", trigger=stepwise.on_event("go"), retries=5)
    async def sender(ctx: stepwise.Context) -> dict[str, Any]:
        sent = await ctx.step.send_event("notify", [
            stepwise.Event("user.notified", {"n": 1}), {"name": "user.notified", "data": {"n": 2}}])
        await ctx.step.run("later", later)
        return sent

    @app.function(id="receiver", trigger=stepwise.on_event("user.notified"))
    async def receiver(ctx: stepwise.Context) -> None:
        received.append(ctx.event.data["n"])

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "sender")
    assert run["status"] == "completed" and len(run["output"]["ids"]) == 2
    assert sorted(received) == [1, 2]


async def test_event_with_future_ts_is_delivered_then(db: str) -> None:
    app = stepwise.App("t")
    ran_at: list[float] = []
    clock = stepwise.ManualClock()

    @app.function(id="reminder", trigger=stepwise.on_event("remind"))
    async def reminder(ctx: stepwise.Context) -> None:
        ran_at.append(clock.now())

    async with Harness(app, db, clock=clock) as h:
        due = int((clock.now() + 30 * DAY) * 1000)
        response = await h.http.post("/api/v1/events", json={"name": "remind", "ts": due})
        assert response.status_code == 200
        await h.settle(advance=False)
        assert ran_at == []
        await h.settle()
    assert ran_at == [due / 1000]


async def test_cron_fires_once_per_tick_with_two_workers(db: str) -> None:
    app = stepwise.App("cron")
    ticks: list[int] = []

    @app.function(id="report", trigger=stepwise.on_cron("*/5 * * * *"))
    async def report(ctx: stepwise.Context) -> None:
        ticks.append(ctx.event.data["tick"])

    clock = stepwise.ManualClock(start=1_800_000_000.0)  # 2027-01-15T08:00:00Z, a 5-minute mark
    async with Harness(app, db, clock=clock) as h1, Harness(app, h1.storage, clock=clock) as h2:
        assert h1.storage is h2.storage
        for _ in range(3):
            clock.advance(300)
            await h1.settle(advance=False)
            await h2.settle(advance=False)
        clock.advance(3600)  # "down" for an hour: one run for the latest missed tick
        await h1.settle(advance=False)
        await h2.settle(advance=False)
        runs = await h1.runs(function="report")
    start = 1_800_000_000_000
    assert sorted(ticks) == [start + 300_000, start + 600_000, start + 900_000,
                             start + 4_500_000]
    assert len(runs) == 4


@pytest.mark.parametrize("bad", [lambda: stepwise.on_cron("61 * * * *"),
                                 lambda: stepwise.on_cron("*/61 * * * *"),
                                 lambda: stepwise.on_cron("0 */24 * * *"),
                                 lambda: stepwise.on_cron("* * * * *", tz="Mars/Base")])
def test_bad_cron_is_refused(bad: Any) -> None:
    with pytest.raises(stepwise.errors.DefinitionError):
        bad()
