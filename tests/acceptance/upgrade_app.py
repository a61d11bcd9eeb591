"""The apps of tests/acceptance/test_upgrade.py: an Inngest SDK app (PyPI `inngest`, FastAPI)
and a Python-native one, each with runs that sleep, wait or wait out a retry across an
upgrade of the server."""

from __future__ import annotations

import datetime
from typing import Any

import fastapi
import inngest
import inngest.fast_api

import stepwise

client = inngest.Inngest(app_id="upgrade-sdk", is_production=False)


@client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="upgrade.sleep"))
async def sleeper(ctx: inngest.Context) -> dict[str, Any]:
    loaded = await ctx.step.run("load", lambda: {"n": ctx.event.data["n"]})
    await ctx.step.sleep("nap", datetime.timedelta(days=1))
    after = await ctx.step.run("after", lambda: loaded["n"] + 1)
    return {"loaded": loaded, "after": after}


@client.create_function(fn_id="waiter", trigger=inngest.TriggerEvent(event="upgrade.wait"))
async def waiter(ctx: inngest.Context) -> dict[str, Any]:
    first = await ctx.step.run("first", lambda: "before the upgrade")
    go = await ctx.step.wait_for_event("go", event="upgrade.go",
                                       timeout=datetime.timedelta(days=1))
    return {"first": first, "go": go.data["word"] if go else None}


@client.create_function(fn_id="retrier", trigger=inngest.TriggerEvent(event="upgrade.retry"),
                        retries=2)
async def retrier(ctx: inngest.Context) -> str:
    def flaky() -> str:
        if ctx.attempt == 0:  # retried in an hour: still queued when the server stops
            raise inngest.RetryAfterError("later", datetime.timedelta(hours=1))
        return f"done on attempt {ctx.attempt}"
    return await ctx.step.run("flaky", flaky)


sdk = fastapi.FastAPI()
inngest.fast_api.serve(sdk, client, [sleeper, waiter, retrier])

native = stepwise.App("upgrade-native")


@native.function(id="native-sleeper", trigger=stepwise.on_event("upgrade.native"))
async def native_sleeper(ctx: stepwise.Context) -> dict[str, Any]:
    loaded = await ctx.step.run("load", lambda: {"n": ctx.event.data["n"]})
    await ctx.step.sleep("nap", datetime.timedelta(days=1))
    return {"after": loaded["n"] + 1}
