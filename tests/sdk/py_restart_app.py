"""An SDK app deployed twice: release 2 (RELEASE=2) adds a function, so `stepwise dev -u` must
re-sync it when it comes back."""

from __future__ import annotations

import os

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="py-restart", is_production=False)


@client.create_function(fn_id="greet", trigger=inngest.TriggerEvent(event="person.arrived"),
                        retries=10)
async def greet(ctx: inngest.Context) -> str:
    return await ctx.step.run("hello", lambda: f"hello from release {os.environ['RELEASE']}")


@client.create_function(fn_id="farewell", trigger=inngest.TriggerEvent(event="person.left"))
async def farewell(ctx: inngest.Context) -> str:
    return "goodbye"


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [greet] if os.environ["RELEASE"] == "1" else [greet, farewell])
