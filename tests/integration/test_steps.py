"""Memoization, retries, failure handling and replay, on every backend, with a test clock."""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import enum
import itertools
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pydantic
import pytest

import stepwise
from stepwise.testing import Harness


async def test_memoized_steps_run_once_and_failing_step_is_retried(db: str) -> None:
    app = stepwise.App("t")
    calls: Counter[str] = Counter()

    def side_effect(name: str, value: Any) -> Any:
        calls[name] += 1
        if name == "three" and calls[name] <= 2:
            raise ConnectionError(f"flaky attempt {calls[name]}")
        return value

    @app.function(id="three-steps", trigger=stepwise.on_event("go"), retries=3)
    async def three(ctx: stepwise.Context) -> dict[str, Any]:
        a = await ctx.step.run("one", side_effect, "one", 1)
        b = await ctx.step.run("two", side_effect, "two", {"n": 2})
        c = await ctx.step.run("three", side_effect, "three", [3])
        return {"sum": a + b["n"] + c[0], "attempt": ctx.attempt}

    async with Harness(app, db) as h:
        event_id = await h.send("go", {"x": 1})
        await h.settle()
        run = await h.run_for(event_id, "three-steps")

    assert dict(calls) == {"one": 1, "two": 1, "three": 3}
    assert run["status"] == "completed"
    assert run["output"] == {"sum": 6, "attempt": 0}
    steps = {s["id"]: s for s in run["steps"]}
    assert [s["id"] for s in run["steps"]] == ["one", "two", "three"]
    assert steps["one"]["attempts"] == 1 and steps["one"]["output"] == 1
    assert steps["three"]["attempts"] == 3 and steps["three"]["status"] == "completed"
    assert [(f["step_id"], f["attempt"], f["error"]["message"]) for f in run["failures"]] == [
        ("three", 1, "flaky attempt 1"), ("three", 2, "flaky attempt 2")]


async def test_retries_exhausted_fail_the_run_then_replay_completes(db: str) -> None:
    app = stepwise.App("t")
    calls: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    state = {"fixed": False}

    def charge() -> str:
        calls["charge"] += 1
        return "ch_1"

    def ship() -> str:
        calls["ship"] += 1
        if not state["fixed"]:
            raise RuntimeError("warehouse API is down")
        return "shipped"

    async def on_failure(ctx: stepwise.Context) -> None:
        failures.append({"error": ctx.error, "event": ctx.event.data})

    @app.function(id="order", trigger=stepwise.on_event("order.paid"), retries=2,
                  on_failure=on_failure)
    async def order(ctx: stepwise.Context) -> str:
        await ctx.step.run("charge", charge)
        return str(await ctx.step.run("ship", ship))

    async with Harness(app, db) as h:
        event_id = await h.send("order.paid", {"order": 7})
        await h.settle()
        run = await h.run_for(event_id, "order")
        assert run["status"] == "failed"
        assert run["error"]["name"] == "RuntimeError"
        assert run["error"]["message"] == "warehouse API is down"
        assert run["error"]["step_id"] == "ship"
        assert [(f["step_id"], f["attempt"]) for f in run["failures"]] == [
            ("ship", 1), ("ship", 2), ("ship", 3)]
        assert calls == {"charge": 1, "ship": 3}
        assert len(failures) == 1
        assert failures[0]["error"]["message"] == "warehouse API is down"
        assert failures[0]["event"] == {"order": 7}
        assert [r["status"] for r in await h.runs(status="failed")] == ["failed"]

        state["fixed"] = True
        response = await h.http.post(f"/api/v1/runs/{run['id']}/replay")
        assert response.status_code == 200, response.text
        assert response.json()["attempts"] == 2
        await h.settle()
        run = await h.run(run["id"])
        assert run["status"] == "completed", run
        assert run["output"] == "shipped"
        assert calls == {"charge": 1, "ship": 4}
        assert len(failures) == 1

        again = await h.http.post(f"/api/v1/runs/{run['id']}/replay")
        assert again.status_code == 409
        assert "completed" in again.json()["error"]


async def test_fan_out_starts_one_run_per_listening_function(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="welcome", trigger=stepwise.on_event("user.signup"))
    async def welcome(ctx: stepwise.Context) -> str:
        return f"welcome {ctx.event.data['name']}"

    @app.function(id="newsletter", trigger=[stepwise.on_event("user.signup"),
                                            stepwise.on_event("user.resubscribed")])
    def newsletter(ctx: stepwise.Context) -> str:
        return f"subscribed {ctx.event.data['name']}"

    @app.function(id="unrelated", trigger=stepwise.on_event("order.paid"))
    async def unrelated(ctx: stepwise.Context) -> None:
        raise AssertionError("must not run")

    async with Harness(app, db) as h:
        event_id = await h.send("user.signup", {"name": "ada"})
        await h.settle()
        runs = await h.runs(event_id=event_id)
    assert sorted((r["function_id"], r["status"], r["output"]) for r in runs) == [
        ("newsletter", "completed", "subscribed ada"),
        ("welcome", "completed", "welcome ada"),
    ]


async def test_non_retriable_error_fails_at_once(db: str) -> None:
    app = stepwise.App("t")
    calls = Counter[str]()

    def bad() -> None:
        calls["bad"] += 1
        raise stepwise.NonRetriableError("card declined")

    @app.function(id="f", trigger=stepwise.on_event("go"), retries=5)
    async def f(ctx: stepwise.Context) -> None:
        await ctx.step.run("pay", bad)

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert calls["bad"] == 1
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NonRetriableError"
    assert run["steps"][0]["status"] == "failed"


async def test_retry_after_error_waits_the_given_delay(db: str) -> None:
    app = stepwise.App("t")
    attempts: list[float] = []
    clock = stepwise.ManualClock()

    def limited() -> str:
        attempts.append(clock.now())
        if len(attempts) == 1:
            raise stepwise.RetryAfterError("rate limited", timedelta(hours=1))
        return "ok"

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> str:
        return str(await ctx.step.run("call", limited))

    async with Harness(app, db, clock=clock) as h:
        event_id = await h.send("go")
        await h.settle(advance=False)
        assert len(attempts) == 1
        clock.advance(3599)
        await h.settle(advance=False)
        assert len(attempts) == 1, "retried before the requested delay"
        clock.advance(1)
        await h.settle(advance=False)
        run = await h.run_for(event_id, "f")
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] == 3600
    assert run["status"] == "completed"


async def test_backoff_grows_between_attempts(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()
    times: list[float] = []

    def flaky() -> None:
        times.append(clock.now())
        raise ValueError("nope")

    @app.function(id="f", trigger=stepwise.on_event("go"), retries=4)
    async def f(ctx: stepwise.Context) -> None:
        await ctx.step.run("s", flaky)

    async with Harness(app, db, clock=clock) as h:
        await h.send("go")
        await h.settle()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 5
    # Exponential with jitter: retry n waits between 2^n and 2^(n+1) seconds.
    for n, gap in enumerate(gaps):
        assert 2 ** n <= gap <= 2 ** (n + 1) + 0.01, gaps


async def test_step_result_that_is_not_json_is_a_clear_error(db: str) -> None:
    app = stepwise.App("t")

    class Connection:
        pass

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> None:
        await ctx.step.run("open-connection", Connection)

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepOutputError"
    message = run["error"]["message"]
    assert "step 'open-connection'" in message and "not JSON-serializable" in message
    assert "Connection cannot be stored" in message  # names the type
    assert "by reference" not in message  # size advice only for what is too large


class Plan(enum.Enum):
    free = "free"
    pro = "pro"


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    plan: Plan
    balance: decimal.Decimal
    since: datetime


@dataclasses.dataclass
class Invoice:
    number: int
    due: date
    lines: tuple[str, ...]


def load_customer() -> Customer:
    return Customer(id=uuid.UUID(int=7), plan=Plan.pro, balance=decimal.Decimal("12.30"),
                    since=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def make_invoices() -> list[Invoice]:
    return [Invoice(1, date(2026, 2, 1), ("a", "b"))]


async def test_rich_step_results_round_trip_as_declared_on_first_run_and_replay(
        db: str) -> None:
    app = stepwise.App("t")
    seen: list[tuple[Any, ...]] = []

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> Any:
        customer = await ctx.step.run("customer", load_customer)
        invoices = await ctx.step.run("invoices", make_invoices)
        when = await ctx.step.run(stepwise.StepOptions("when", returns=datetime),
                                  lambda: datetime(2026, 5, 6, tzinfo=UTC))
        untyped = await ctx.step.run("untyped", lambda: {"at": date(2026, 1, 1), "n": {3}})
        seen.append((customer, invoices, when, untyped))
        await ctx.step.sleep("nap", timedelta(hours=1))  # the next execution replays them
        return customer  # a run's output may be rich too

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert run["status"] == "completed" and len(seen) == 2
    assert seen[0] == seen[1]  # the first execution and the replay see the same values
    customer, invoices, when, untyped = seen[1]
    assert customer == load_customer() and isinstance(customer.balance, decimal.Decimal)
    assert invoices == make_invoices() and isinstance(invoices[0].lines, tuple)
    assert when == datetime(2026, 5, 6, tzinfo=UTC)
    assert untyped == {"at": "2026-01-01", "n": [3]}  # no declared type: the stored JSON
    assert run["output"] == {"id": "00000000-0000-0000-0000-000000000007", "plan": "pro",
                             "balance": "12.30", "since": "2026-01-02T03:04:05Z"}



async def test_step_output_over_the_limit_names_step_and_limit(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> None:
        await ctx.step.run("big", lambda: "x" * 2000)

    async with Harness(app, db, limits=stepwise.Limits(step_output_bytes=1000)) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert run["status"] == "failed"
    assert "step 'big'" in run["error"]["message"]
    assert "limit of 1000 bytes" in run["error"]["message"]


async def test_sync_function_and_repeated_step_ids_in_a_loop(db: str) -> None:
    app = stepwise.App("t")
    seen: list[int] = []

    def work(i: int) -> int:
        seen.append(i)
        if i == 2 and seen.count(2) == 1:
            raise TimeoutError("flaky")
        return i * 10

    @app.function(id="loop", trigger=stepwise.on_event("go"))
    def loop(ctx: stepwise.Context) -> list[int]:
        return [ctx.step.run("item", work, i) for i in range(4)]

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "loop")
    assert run["status"] == "completed"
    assert run["output"] == [0, 10, 20, 30]
    assert [s["id"] for s in run["steps"]] == ["item", "item:1", "item:2", "item:3"]
    assert seen == [0, 1, 2, 2, 3]


async def test_function_error_outside_steps_is_retried_then_fails(db: str) -> None:
    app = stepwise.App("t")
    attempts: list[int] = []

    @app.function(id="f", trigger=stepwise.on_event("go"), retries=2)
    async def f(ctx: stepwise.Context) -> None:
        attempts.append(ctx.attempt)
        raise KeyError("missing")

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert attempts == [0, 1, 2]
    assert run["status"] == "failed" and run["error"]["name"] == "KeyError"
    assert [(f["step_id"], f["attempt"], f["error"]["name"]) for f in run["failures"]] == [
        (None, 1, "KeyError"), (None, 2, "KeyError"), (None, 3, "KeyError")]


async def test_step_error_can_be_caught_for_compensation(db: str) -> None:
    app = stepwise.App("t")

    def fail() -> None:
        raise stepwise.NonRetriableError("no stock")

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> str:
        try:
            await ctx.step.run("reserve", fail)
        except stepwise.StepError as exc:
            await ctx.step.run("refund", lambda: "refunded")
            return f"compensated after {exc.step_id}"
        return "unreachable"

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert run["status"] == "completed"
    assert run["output"] == "compensated after reserve"
    assert [(s["id"], s["status"]) for s in run["steps"]] == [
        ("reserve", "failed"), ("refund", "completed")]


async def test_changed_step_order_is_reported_not_memoized(db: str) -> None:
    app = stepwise.App("t")
    version = {"v": 1}

    @app.function(id="f", trigger=stepwise.on_event("go"), retries=1)
    async def f(ctx: stepwise.Context) -> str:
        first, second = ("a", "b") if version["v"] == 1 else ("b", "a")
        await ctx.step.run(first, lambda: first)
        if version["v"] == 1:
            raise RuntimeError("deploy happens while this run waits to retry")
        await ctx.step.run(second, lambda: second)
        return "done"

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle(advance=False)
        version["v"] = 2
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NonDeterminismError"
    assert "'b' in the code but 'a' in the run's history" in run["error"]["message"]


async def test_cancel_a_queued_run_and_replay_it(db: str) -> None:
    app = stepwise.App("t")
    clock = stepwise.ManualClock()

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> str:
        await ctx.step.run("wait", _raise_retry_after)
        return "ran"

    async with Harness(app, db, clock=clock) as h:
        event_id = await h.send("go")
        await h.settle(advance=False)
        run = await h.run_for(event_id, "f")
        assert run["status"] == "queued"  # waiting for its retry
        response = await h.http.post(f"/api/v1/runs/{run['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        assert (await h.http.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 409
        await h.settle()
        assert (await h.run(run["id"]))["status"] == "cancelled"
        assert (await h.http.post("/api/v1/runs/nope/cancel")).status_code == 404


_tries = Counter[str]()


def _raise_retry_after() -> str:
    _tries["x"] += 1
    raise stepwise.RetryAfterError("later", timedelta(minutes=5))


@pytest.mark.parametrize("retries", [-1, 101, "3", True])
def test_bad_retries_are_refused_at_definition(retries: Any) -> None:
    app = stepwise.App("t")
    with pytest.raises(stepwise.errors.DefinitionError, match="retries"):
        app.function(id="f", trigger=stepwise.on_event("go"), retries=retries)


async def test_a_step_can_have_its_own_retry_count(db: str) -> None:
    app = stepwise.App("t")
    calls: Counter[str] = Counter()

    def flaky(name: str, failures: int) -> str:
        calls[name] += 1
        if calls[name] <= failures:
            raise ConnectionError(f"{name} attempt {calls[name]}")
        return name

    @app.function(id="f", trigger=stepwise.on_event("go"), retries=0)
    async def f(ctx: stepwise.Context) -> str:
        patient = await ctx.step.run(stepwise.StepOptions("patient", retries=4), flaky,
                                     "patient", 4)
        try:
            await ctx.step.run("strict", flaky, "strict", 1)
        except stepwise.StepError:
            return f"{patient}, strict failed"
        return "unexpected"

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "f")
    assert run["output"] == "patient, strict failed", run
    assert calls == {"patient": 5, "strict": 1}
    with pytest.raises(stepwise.errors.DefinitionError, match="retries"):
        stepwise.StepOptions("x", retries=-1)


async def _until(check: Any, timeout: float = 10.0) -> Any:
    """Poll `check()` (a coroutine function) until it answers something true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := await check()):
        if loop.time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.01)
    return found


async def test_a_step_is_stored_once_the_code_awaits_and_before_the_next_step_starts(
        db: str) -> None:
    app = stepwise.App("t")
    proceed = asyncio.Event()
    stored_before_b: list[list[str]] = []

    async def stored(h: Harness, run_id: str) -> list[str]:
        return [s["id"] for s in (await h.run(run_id))["steps"] if s["status"] == "completed"]

    @app.function(id="f", trigger=stepwise.on_event("go"))
    async def f(ctx: stepwise.Context) -> int:
        await ctx.step.run("a", lambda: 1)
        await proceed.wait()  # code that awaits something else: step a is stored meanwhile

        async def b() -> int:
            stored_before_b.append(await stored(h, ctx.run_id))
            return 2
        return int(await ctx.step.run("b", b)) + 1

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        runs = await _until(lambda: h.runs(event_id=event_id, function="f"))
        assert await _until(lambda: stored(h, runs[0]["id"])) == ["a"]
        assert (await h.run(runs[0]["id"]))["status"] == "running"
        proceed.set()
        await h.settle()
        run = await h.run(runs[0]["id"])
    assert stored_before_b == [["a"]]
    assert run["status"] == "completed" and run["output"] == 3
    assert [(s["id"], s["output"]) for s in run["steps"]] == [("a", 1), ("b", 2)]


async def test_a_last_step_is_stored_with_the_run_end(db: str) -> None:
    app = stepwise.App("t")
    calls: Counter[str] = Counter()

    def work() -> dict[str, int]:
        calls["work"] += 1
        return {"n": 1}

    @app.function(id="job", trigger=stepwise.on_event("go"))
    async def job(ctx: stepwise.Context) -> dict[str, int]:
        return dict(await ctx.step.run("work", work))

    async with Harness(app, db) as h:
        applied: list[list[str]] = []
        apply = h.engine.apply

        async def spy(lease: Any, outcomes: list[Any], **kw: Any) -> Any:
            applied.append([type(o).__name__ for o in outcomes])
            return await apply(lease, outcomes, **kw)
        h.engine.apply = spy  # type: ignore[method-assign]
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "job")
    assert calls["work"] == 1
    assert run["status"] == "completed" and run["output"] == {"n": 1}
    assert [(s["id"], s["output"]) for s in run["steps"]] == [("work", {"n": 1})]
    assert applied == [["StepCompleted", "RunCompleted"]]  # one transaction, not two


async def test_nul_and_unicode_edge_values_round_trip_through_every_stored_column(
        db: str) -> None:
    """Values JSON allows that a database column may not (a NUL, astral characters, a
    backslash before a u): step outputs, the run's output, log lines, event data and errors
    keep them exactly, and the listings that read them still answer (on PostgreSQL a TEXT
    column cannot hold U+0000: it stays escaped inside the stored JSON)."""
    app = stepwise.App("t")
    odd = "a\u0000b \U0001f600 \\u0000 \u2028"

    @app.function(id="odd", trigger=stepwise.on_event("odd"), retries=0)
    async def odd_values(ctx: stepwise.Context) -> dict[str, Any]:
        echoed = await ctx.step.run("echo", lambda: {"v": ctx.event.data["v"], odd: [odd]})
        ctx.logger.info("logged %s", odd)
        return {"echoed": echoed}

    @app.function(id="odd-failure", trigger=stepwise.on_event("odd"), retries=0)
    async def odd_failure(ctx: stepwise.Context) -> None:
        raise ValueError(odd)

    async with Harness(app, db) as h:
        event_id = await h.send("odd", {"v": odd})
        await h.settle()
        run = await h.run_for(event_id, "odd")
        failed = await h.run_for(event_id, "odd-failure")
        listed = (await h.http.get("/api/v1/runs")).json()["runs"]
        event = (await h.http.get(f"/api/v1/events/{event_id}")).json()
    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"echoed": {"v": odd, odd: [odd]}}
    assert run["steps"][0]["output"] == {"v": odd, odd: [odd]}
    # A log line is plain text: U+0000 reads as U+FFFD there (PostgreSQL cannot hold it).
    assert [line["message"] for line in run["logs"]] == [f"logged {odd}".replace("\0", "\ufffd")]
    assert failed["error"]["message"] == odd
    assert event["data"] == {"v": odd}
    assert {r["function_id"] for r in listed} == {"odd", "odd-failure"}


async def test_a_step_id_no_database_can_store_is_refused(db: str) -> None:
    app = stepwise.App("t")

    @app.function(id="bad-id", trigger=stepwise.on_event("go"), retries=0)
    async def bad_id(ctx: stepwise.Context) -> None:
        await ctx.step.run("a\u0000b", lambda: 1)

    async with Harness(app, db) as h:
        event_id = await h.send("go")
        await h.settle()
        run = await h.run_for(event_id, "bad-id")
    assert run["status"] == "failed", run
    assert "without U+0000" in run["error"]["message"], run["error"]
