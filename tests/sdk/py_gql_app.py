"""An app written with Inngest's official Python SDK whose runs `test_gql.py` reads through
the dev server's GraphQL API, with the queries the SDKs' own test helpers send: steps with a
repeated id, a step that fails for good (`unhandled-step-errors`, as inngest-js's example of
that name), a step that fails once, and a long sleep."""

from __future__ import annotations

import datetime
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="py-gql", is_production=False)
_flaky_calls: dict[str, int] = {}


def double(n: int) -> int:
    return n * 2


@client.create_function(fn_id="steps", trigger=inngest.TriggerEvent(event="gql/steps"))
async def steps(ctx: inngest.Context) -> dict[str, Any]:
    first = await ctx.step.run("foo", lambda: 0)
    second = await ctx.step.run("foo", lambda: 1)  # the same id again: "foo" twice in the trace
    doubled = await ctx.step.run("double", double, ctx.event.data["n"])
    return {"foo": [first, second], "doubled": doubled}


def a_fails() -> None:
    raise ValueError("A failed!")


@client.create_function(fn_id="unhandled-step-errors", retries=1,
                        trigger=inngest.TriggerEvent(event="gql/fails"))
async def unhandled_step_errors(ctx: inngest.Context) -> str:
    await ctx.step.run("a fails", a_fails)
    return await ctx.step.run("b never runs", lambda: "b")


def flaky(run_id: str) -> str:
    """Fails on its first call for each run, then works."""
    _flaky_calls[run_id] = _flaky_calls.get(run_id, 0) + 1
    if _flaky_calls[run_id] == 1:
        raise ConnectionError("try again")
    return "ok"


@client.create_function(fn_id="retried", retries=2,
                        trigger=inngest.TriggerEvent(event="gql/retried"))
async def retried(ctx: inngest.Context) -> str:
    return await ctx.step.run("flaky", flaky, ctx.run_id)


@client.create_function(fn_id="naps", trigger=inngest.TriggerEvent(event="gql/naps"))
async def naps(ctx: inngest.Context) -> str:
    await ctx.step.sleep("nap", datetime.timedelta(days=1))
    return "rested"


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [steps, unhandled_step_errors, retried, naps])
