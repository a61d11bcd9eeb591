"""An app written with Inngest's official Python SDK, served by FastAPI, unchanged: stepwise
runs its functions over HTTP (`stepwise dev -u http://127.0.0.1:PORT/api/inngest`).
INNGEST_DEV points the SDK at the stepwise server."""

from __future__ import annotations

import datetime
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="py-shop", is_production=False)
_attempts: dict[str, int] = {}


async def load_user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "email": f"user{user_id}@example.com"}


async def subscribe(email: str) -> str:
    """Fails on its first attempt for each address, then works."""
    _attempts[email] = _attempts.get(email, 0) + 1
    if _attempts[email] == 1:
        raise ConnectionError("mailing-list API timed out")
    return f"subscribed {email} after {_attempts[email]} attempts"


@client.create_function(fn_id="signup", trigger=inngest.TriggerEvent(event="user.signup"),
                        retries=3)
async def signup(ctx: inngest.Context) -> dict[str, Any]:
    user = await ctx.step.run("load-user", load_user, ctx.event.data["user_id"])
    subscribed = await ctx.step.run("subscribe", subscribe, user["email"])
    again = await ctx.step.run("load-user", load_user, 0)  # a repeated step id
    return {"email": user["email"], "subscribed": subscribed, "again": again["id"]}


@client.create_function(fn_id="drip", trigger=inngest.TriggerEvent(event="user.signup"))
async def drip(ctx: inngest.Context) -> str:
    booking = await ctx.step.wait_for_event(
        "first-booking", event="booking.created",
        if_exp="event.data.user_id == async.data.user_id",
        timeout=datetime.timedelta(days=3))
    return f"booked {booking.data['booking_id']}" if booking else "no booking"


@client.create_function(fn_id="vip-only",
                        trigger=inngest.TriggerEvent(event="user.signup",
                                                     expression="event.data.vip == true"))
async def vip_only(ctx: inngest.Context) -> str:
    return "welcome, VIP"


async def record_refusal(ctx: inngest.Context) -> str:
    """The onFailure handler: triggered by `inngest/function.failed` for `refuses`."""
    return f"handled: {ctx.event.data['error']['message']}"


@client.create_function(fn_id="refuses", trigger=inngest.TriggerEvent(event="order.bad"),
                        retries=0, on_failure=record_refusal)
async def refuses(ctx: inngest.Context) -> None:
    raise inngest.NonRetriableError("order cannot be processed")


async def price(item: str) -> int:
    return {"tea": 3, "cake": 5}[item]


@client.create_function(fn_id="basket", trigger=inngest.TriggerEvent(event="basket.checked"))
async def basket(ctx: inngest.Context) -> dict[str, Any]:
    tea, cake = await ctx.group.parallel((lambda: ctx.step.run("price-tea", price, "tea"),
                                          lambda: ctx.step.run("price-cake", price, "cake")))
    total = await ctx.step.run("total", lambda: _sum(tea, cake))
    return {"tea": tea, "cake": cake, "total": total}


async def _sum(*values: int) -> int:
    return sum(values)


@client.create_function(fn_id="checkout", trigger=inngest.TriggerEvent(event="order.placed"))
async def checkout(ctx: inngest.Context) -> dict[str, Any]:
    """Invokes across apps: a Python-native function and a Flask app's function."""
    amount = ctx.event.data["amount"]
    taxed = await ctx.step.invoke_by_id("tax", app_id="billing", function_id="tax",
                                        data={"amount": amount})
    receipt = await ctx.step.invoke_by_id("receipt", app_id="py-mailer",
                                          function_id="render-receipt",
                                          data={"items": {"amount": amount, **taxed}})
    try:
        await ctx.step.invoke_by_id("missing", app_id="nowhere", function_id="nothing")
    except inngest.StepError as exc:
        return {"taxed": taxed, "receipt": receipt, "missing": exc.message}
    return {"taxed": taxed, "receipt": receipt, "missing": None}


@client.create_function(fn_id="big", trigger=inngest.TriggerEvent(event="report.big"))
async def big(ctx: inngest.Context) -> dict[str, Any]:
    """Its memo outgrows a call (over 1 MiB): later calls make the SDK read it (use_api)."""
    blob = await ctx.step.run("blob", lambda: "x" * 1_200_000)
    size = await ctx.step.run("size", lambda: len(blob))
    return {"size": size, "head": blob[:3]}


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [signup, drip, vip_only, refuses, basket, checkout, big])
