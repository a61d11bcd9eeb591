"""A 10-step function on Inngest's Python SDK (FastAPI), for `bench/sdk_steps.py`."""

from __future__ import annotations

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="bench-py", is_production=False)
STEPS = 10


@client.create_function(fn_id="steps", trigger=inngest.TriggerEvent(event="bench.py"),
                        retries=0)
async def steps(ctx: inngest.Context) -> int:
    for i in range(STEPS):
        await ctx.step.run(f"step-{i}", lambda i=i: i)
    return STEPS


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [steps])
