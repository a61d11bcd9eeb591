"""The Python-native function of `bench/sdk_steps.py`: the same steps, run in-process by the
`stepwise dev` that runs the SDK apps' functions, so all are measured alike."""

from __future__ import annotations

import stepwise

app = stepwise.App("bench-native")
STEPS = 10


def step(i: int) -> int:
    return i


@app.function(id="steps", trigger=stepwise.on_event("bench.native"), retries=0)
async def steps(ctx: stepwise.Context) -> int:
    for i in range(STEPS):
        await ctx.step.run(f"step-{i}", step, i)
    return STEPS
