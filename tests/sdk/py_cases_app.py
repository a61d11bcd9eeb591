"""inngest-py's own function test cases (github inngest/inngest-py,
`tests/test_inngest/test_function/cases/`), their behaviours rewritten as one FastAPI app on the
PyPI SDK, for tests/sdk/test_python_sdk_cases.py. Each function is named after its upstream
case; `GET /test/state` shows what the functions recorded (counters, attempts, errors)."""

from __future__ import annotations

import asyncio
import datetime
from collections import defaultdict
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="py-cases", is_production=False)
#: What ran: counters and notes by key (`<case>/<run id>/<what>`).
state: dict[str, Any] = defaultdict(int)
notes: dict[str, list[Any]] = defaultdict(list)


def trigger(case: str) -> inngest.TriggerEvent:
    return inngest.TriggerEvent(event=f"py-cases/{case}")


class MyError(Exception):
    pass


@client.create_function(fn_id="async_fn_with_sync_step_callback",
                        trigger=trigger("async_fn_with_sync_step_callback"), retries=0)
async def sync_callback(ctx: inngest.Context) -> str:
    return await ctx.step.run("step_1", lambda: "hi")


@client.create_function(fn_id="change_step_error", trigger=trigger("change_step_error"),
                        retries=0)
async def change_step_error(ctx: inngest.Context) -> None:
    def fails() -> None:
        raise ValueError("foo")
    try:
        await ctx.step.run("foo", fails)
    except inngest.StepError as exc:
        notes[f"change_step_error/{ctx.run_id}"].append([exc.name, exc.message])
        raise MyError("I am new") from None


@client.create_function(fn_id="client_send", trigger=trigger("client_send"), retries=0)
async def client_send(ctx: inngest.Context) -> list[str]:
    return list(await client.send(inngest.Event(name="py-cases/client_send.sent",
                                                data={"from": ctx.run_id})))


@client.create_function(fn_id="crazy_ids%$^&*(_+{|:<?☃️",
                        trigger=trigger("crazy_ids"), retries=0)
async def crazy_ids(ctx: inngest.Context) -> str:
    return await ctx.step.run("step%$^&*(_+{|:<?☃️", lambda: "ok")


@client.create_function(fn_id="debounce", trigger=trigger("debounce"), retries=0,
                        debounce=inngest.Debounce(period=datetime.timedelta(seconds=1)))
async def debounce(ctx: inngest.Context) -> Any:
    state["debounce/runs"] += 1
    return ctx.event.data


@client.create_function(fn_id="dedupe_step_ids", trigger=trigger("dedupe_step_ids"), retries=0)
async def dedupe_step_ids(ctx: inngest.Context) -> list[int]:
    out = []
    for _ in range(2):
        def count() -> int:
            state[f"dedupe/{ctx.run_id}"] += 1
            return int(state[f"dedupe/{ctx.run_id}"]) - 1
        out.append(await ctx.step.run("foo", count))
    return out


@client.create_function(fn_id="event_payload", trigger=trigger("event_payload"), retries=0)
async def event_payload(ctx: inngest.Context) -> dict[str, Any]:
    return {"id": ctx.event.id, "name": ctx.event.name, "data": ctx.event.data,
            "ts": ctx.event.ts}


@client.create_function(fn_id="function_args", trigger=trigger("function_args"), retries=0)
async def function_args(ctx: inngest.Context) -> dict[str, Any]:
    return {"attempt": ctx.attempt, "events": len(ctx.events),
            "run_id": ctx.run_id, "step": type(ctx.step).__name__}


@client.create_function(fn_id="inconsistent_step_order",
                        trigger=trigger("inconsistent_step_order"), retries=0)
async def inconsistent_step_order(ctx: inngest.Context) -> list[int]:
    key = f"inconsistent/{ctx.run_id}"
    state[key + "/requests"] += 1

    def one() -> int:
        state[key + "/1"] += 1
        return 1

    def two() -> int:
        state[key + "/2"] += 1
        return 2
    if state[key + "/requests"] % 2:  # the order flips on every request
        return [await ctx.step.run("step_1", one), await ctx.step.run("step_2", two)]
    return list(reversed([await ctx.step.run("step_2", two), await ctx.step.run("step_1", one)]))


@client.create_function(fn_id="invoke_child", trigger=inngest.TriggerEvent(event="never"),
                        retries=0)
async def invoke_child(ctx: inngest.Context) -> dict[str, Any]:
    if ctx.event.data.get("fail"):
        raise MyError("oh no")
    if ctx.event.data.get("slow"):
        await ctx.step.sleep("zzz", datetime.timedelta(days=1))
    return {"foo": {"bar": ctx.event.data.get("n")}}


@client.create_function(fn_id="invoke_by_id", trigger=trigger("invoke_by_id"), retries=0)
async def invoke_by_id(ctx: inngest.Context) -> Any:
    return await ctx.step.invoke_by_id("invoke", function_id="invoke_child", data={"n": 1})


@client.create_function(fn_id="invoke_by_object", trigger=trigger("invoke_by_object"),
                        retries=0)
async def invoke_by_object(ctx: inngest.Context) -> Any:
    return await ctx.step.invoke("invoke", function=invoke_child, data={"n": 2})


@client.create_function(fn_id="invoke_failure", trigger=trigger("invoke_failure"), retries=0)
async def invoke_failure(ctx: inngest.Context) -> dict[str, Any]:
    try:
        await ctx.step.invoke("invoke", function=invoke_child, data={"fail": True})
    except inngest.StepError as exc:
        return {"name": exc.name, "message": exc.message, "stack": type(exc.stack).__name__}
    return {}


@client.create_function(fn_id="invoke_timeout", trigger=trigger("invoke_timeout"), retries=0)
async def invoke_timeout(ctx: inngest.Context) -> None:
    await ctx.step.invoke("invoke", function=invoke_child, data={"slow": True},
                          timeout=datetime.timedelta(seconds=1))


@client.create_function(fn_id="logger", trigger=trigger("logger"), retries=1)
async def logger(ctx: inngest.Context) -> list[Any]:
    """Attempts count per step: the body fails once, then a later step fails once, each
    within its one retry."""
    key = f"logger/{ctx.run_id}"
    await ctx.step.run("step_1", lambda: None)
    if ctx.attempt == 0 and not state[key + "/body-failed"]:
        state[key + "/body-failed"] = 1
        raise inngest.RetryAfterError("body", datetime.timedelta(hours=1))
    await ctx.step.run("step_2", lambda: None)

    def step_3() -> None:
        notes[key].append(ctx.attempt)
        if ctx.attempt == 0:
            raise inngest.RetryAfterError("step", datetime.timedelta(hours=1))
    await ctx.step.run("step_3", step_3)
    return list(notes[key])


@client.create_function(fn_id="multiple_triggers", retries=0, trigger=[
    inngest.TriggerEvent(event="py-cases/multiple_triggers_1"),
    inngest.TriggerEvent(event="py-cases/multiple_triggers_2")])
async def multiple_triggers(ctx: inngest.Context) -> str:
    return ctx.event.name


@client.create_function(fn_id="nested_step_run", trigger=trigger("nested_step_run"), retries=5)
async def nested_step_run(ctx: inngest.Context) -> None:
    async def outer() -> None:
        state[f"nested/{ctx.run_id}"] += 1
        await ctx.step.run("inner", lambda: None)
    await ctx.step.run("outer", outer)


@client.create_function(fn_id="no_steps", trigger=trigger("no_steps"), retries=0)
async def no_steps(ctx: inngest.Context) -> dict[str, Any]:
    return {"foo": {"bar": 1}}


@client.create_function(fn_id="non_retriable_error", trigger=trigger("non_retriable_error"),
                        retries=1)
async def non_retriable_error(ctx: inngest.Context) -> None:
    notes[f"non_retriable/{ctx.run_id}"].append(ctx.attempt)

    def refuse() -> None:
        raise inngest.NonRetriableError("foo")
    await ctx.step.run("step_1", refuse)


async def on_failure_handler(ctx: inngest.Context) -> None:
    notes["on_failure"].append({"attempt": ctx.attempt, "events": len(ctx.events),
                                "data": ctx.event.data, "name": ctx.event.name})


@client.create_function(fn_id="on_failure", trigger=trigger("on_failure"), retries=0,
                        on_failure=on_failure_handler)
async def on_failure(ctx: inngest.Context) -> None:
    raise MyError("intentional failure")


@client.create_function(fn_id="parallel_group_of_sequential_steps",
                        trigger=trigger("parallel_group_of_sequential_steps"), retries=0)
async def parallel_group_of_sequential_steps(ctx: inngest.Context) -> Any:
    async def sequence(*names: str) -> list[str]:
        return [await ctx.step.run(name, lambda n=name: n) for name in names]  # type: ignore[misc]
    return await ctx.group.parallel((lambda: sequence("1a", "1b"),
                                     lambda: sequence("2a", "2b", "2c"),
                                     lambda: ctx.step.run("3", lambda: "3")))


@client.create_function(fn_id="parallel_steps", trigger=trigger("parallel_steps"), retries=0)
async def parallel_steps(ctx: inngest.Context) -> Any:
    key = f"parallel_steps/{ctx.run_id}"
    state[key + "/requests"] += 1

    def step(name: str, value: int) -> Any:
        def run() -> int:
            state[f"{key}/{name}"] += 1
            return value
        return lambda: ctx.step.run(name, run)
    out = await ctx.group.parallel((
        lambda: ctx.step.invoke("invoke", function=invoke_child, data={"n": 3}),
        step("1a", 1), step("1b", 2),
        lambda: ctx.step.send_event("send", events=inngest.Event(name="py-cases/noop"))))
    await ctx.step.run("after", lambda: None)
    return out


@client.create_function(fn_id="retry_after_error", trigger=trigger("retry_after_error"),
                        retries=2)
async def retry_after_error(ctx: inngest.Context) -> int:
    """The function asks to be retried in two hours (the SDK's `retry-after`, an ISO time),
    not on the default backoff (a second or two)."""
    if ctx.attempt == 0:
        raise inngest.RetryAfterError("later", datetime.timedelta(hours=2))
    return ctx.attempt


@client.create_function(fn_id="sleep_until", trigger=trigger("sleep_until"), retries=0)
async def sleep_until(ctx: inngest.Context) -> str:
    await ctx.step.sleep_until("zzz", datetime.datetime.now(datetime.UTC)
                               + datetime.timedelta(days=1))
    return "awake"


@client.create_function(fn_id="steps_that_needs_api", trigger=trigger("steps_that_needs_api"),
                        retries=0)
async def steps_that_needs_api(ctx: inngest.Context) -> int:
    total = 0
    for i in range(4):  # over 1 MiB of memo: later calls make the SDK read it (use_api)
        def big(i: int = i) -> str:
            state[f"big/{ctx.run_id}/{i}"] += 1
            return "x" * 400_000
        total += len(await ctx.step.run(f"big-{i}", big))
    return total


@client.create_function(fn_id="tuple_output", trigger=trigger("tuple_output"), retries=0)
async def tuple_output(ctx: inngest.Context) -> Any:
    return await ctx.step.run("step_1", lambda: (1, 2))


@client.create_function(fn_id="unserializable_step_output",
                        trigger=trigger("unserializable_step_output"), retries=0)
async def unserializable_step_output(ctx: inngest.Context) -> None:
    class Foo:
        pass
    await ctx.step.run("step_1", lambda: Foo())  # type: ignore[arg-type,return-value]


@client.create_function(fn_id="wait_for_event", trigger=trigger("wait_for_event"), retries=0)
async def wait_for_event(ctx: inngest.Context) -> Any:
    event = await ctx.step.wait_for_event(
        "wait", event="py-cases/wait_for_event.fulfill",
        if_exp="event.data.id == async.data.id", timeout=datetime.timedelta(days=1))
    return None if event is None else {"id": event.id, "name": event.name, "ts": event.ts,
                                       "data": event.data}


@client.create_function(fn_id="cancel", trigger=trigger("cancel"), retries=0,
                        cancel=[inngest.Cancel(event="py-cases/cancel.cancel",
                                               if_exp="event.data.id == async.data.id")])
async def cancel(ctx: inngest.Context) -> str:
    state[f"cancel/{ctx.run_id}/started"] = 1
    await asyncio.sleep(2)  # the cancel arrives while this request is in flight
    return "finished"


@client.create_function(fn_id="concurrent_sync_functions",
                        trigger=trigger("concurrent_sync_functions"), retries=0)
async def concurrent(ctx: inngest.Context) -> int:
    state["concurrent/started"] += 1
    for _ in range(100):  # both runs of the two events are in flight at once
        if state["concurrent/started"] >= 2:
            return int(state["concurrent/started"])
        await asyncio.sleep(0.05)
    raise inngest.NonRetriableError("the other run never started")


@client.create_function(fn_id="batch", retries=0, trigger=trigger("batch"),
                        batch_events=inngest.Batch(max_size=3,
                                                   timeout=datetime.timedelta(seconds=60)))
async def batch(ctx: inngest.Context) -> list[Any]:
    return [e.data["n"] for e in ctx.events]


async def two_groups(ctx: inngest.Context, case: str, slow: float,
                     mode: inngest.ParallelMode | None = None) -> list[str]:
    """Two groups of two steps each in parallel, one group slow; records the calls and the
    order the steps ran in."""
    key = f"{case}/{ctx.run_id}"
    state[key + "/requests"] += 1

    def step(name: str, pause: float) -> Any:
        async def run() -> None:
            await asyncio.sleep(pause)
            notes[key].append(name)
        return ctx.step.run(name, run)

    async def fast_group() -> None:
        await step("a.1", 0)
        await step("a.2", 0)

    async def slow_group() -> None:
        await step("b.1", slow)
        await step("b.2", slow)
    groups = (fast_group, slow_group)
    await (ctx.group.parallel(groups) if mode is None else
           ctx.group.parallel(groups, parallel_mode=mode))
    return list(notes[key])


@client.create_function(fn_id="parallel_mode_default", trigger=trigger("parallel_mode_default"),
                        retries=0)
async def parallel_mode_default(ctx: inngest.Context) -> list[str]:
    """A group's second step is planned only once every step planned with the first ones
    settled (7 calls)."""
    return await two_groups(ctx, "parallel_mode_default", 0.5)


@client.create_function(fn_id="parallel_mode_race", trigger=trigger("parallel_mode_race"),
                        retries=0)
async def parallel_mode_race(ctx: inngest.Context) -> list[str]:
    """Race mode: the app is asked again as each step completes, so the fast group runs on
    while the slow step is still running (9 calls)."""
    return await two_groups(ctx, "parallel_mode_race", 1.0, inngest.ParallelMode.RACE)


@client.create_function(fn_id="parallel_step_disappears",
                        trigger=trigger("parallel_step_disappears"), retries=0)
async def parallel_step_disappears(ctx: inngest.Context) -> None:
    """The first call plans three steps; later calls find two: the SDK's error, with its
    `"stack": null`, is the run's error as sent."""
    key = f"parallel_step_disappears/{ctx.run_id}"
    state[key] += 1
    steps: tuple[Any, ...] = (lambda: ctx.step.run("1a", lambda: None),
                              lambda: ctx.step.run("1b", lambda: None))
    if state[key] == 1:
        steps += (lambda: ctx.step.run("1c", lambda: None),)
    await ctx.group.parallel(steps)
    await ctx.step.run("after", lambda: None)


@client.create_function(fn_id="singleton_skip", trigger=trigger("singleton_skip"), retries=0,
                        singleton=inngest.Singleton(mode="skip"))
async def singleton_skip(ctx: inngest.Context) -> None:
    """Upstream: two events at once, one run (the other skipped while the first sleeps)."""
    notes["singleton_skip/runs"].append(ctx.run_id)
    await ctx.step.sleep("zzz", datetime.timedelta(seconds=5))


@client.create_function(fn_id="singleton_cancel", trigger=trigger("singleton_cancel"),
                        retries=0, singleton=inngest.Singleton(mode="cancel"))
async def singleton_cancel(ctx: inngest.Context) -> None:
    """Upstream: a second event while the first run sleeps cancels it; the second runs."""
    notes["singleton_cancel/runs"].append(ctx.run_id)
    await ctx.step.sleep("zzz", datetime.timedelta(seconds=5))


app = fastapi.FastAPI()


@app.get("/test/state")
async def read_state() -> dict[str, Any]:
    return {"state": dict(state), "notes": dict(notes)}


inngest.fast_api.serve(app, client, [
    sync_callback, change_step_error, client_send, crazy_ids, debounce, dedupe_step_ids,
    event_payload, function_args, inconsistent_step_order, invoke_child, invoke_by_id,
    invoke_by_object, invoke_failure, invoke_timeout, logger, multiple_triggers,
    nested_step_run, no_steps, non_retriable_error, on_failure, parallel_group_of_sequential_steps,
    parallel_steps, retry_after_error, sleep_until, steps_that_needs_api, tuple_output,
    unserializable_step_output, wait_for_event, cancel, concurrent, batch, parallel_mode_default,
    parallel_mode_race, parallel_step_disappears, singleton_skip, singleton_cancel])
