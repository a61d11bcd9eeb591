"""A Python-native stepwise app served in the same `stepwise dev` as the SDK apps: it invokes an
SDK function, is invoked by one, and is triggered by the same events."""

from __future__ import annotations

from typing import Any

import stepwise

app = stepwise.App("billing")


@app.function(id="tax", retries=0)
async def tax(ctx: stepwise.Context) -> dict[str, Any]:
    amount = int(ctx.event.data["amount"])
    return {"tax": await ctx.step.run("compute", lambda: amount // 5)}


@app.function(id="greet-signup", trigger=stepwise.on_event("user.signup"), retries=0)
async def greet_signup(ctx: stepwise.Context) -> dict[str, Any]:
    rendered = await ctx.step.invoke("render", function="py-mailer-render-receipt",
                                     data={"items": {"plan": "pro"}})
    return {"rendered": rendered, "user": ctx.event.data["user_id"]}
