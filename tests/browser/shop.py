"""The app the dashboard tests drive: a checkout whose card charge fails until a "fix" is
deployed (the file named by STEPWISE_TEST_FIXED exists), with a flaky step that retries once,
log lines, an invoked function and a short sleep; a ledger post that fails at once with
the message its event gives (long errors); and, for attempts and waits on the run page, a
shelf count that fails twice and then answers, a supplier call that asks to be retried in 30
minutes, and a trial's drip that sleeps a week."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import stepwise

app = stepwise.App("shop")
_flaky: dict[str, int] = {}


def load_order(order: str) -> dict[str, Any]:
    return {"order": order, "amount": 4200, "currency": "EUR"}


def call_fraud_check(order: str) -> dict[str, Any]:
    """Times out on its first call for each order, then answers."""
    _flaky[order] = _flaky.get(order, 0) + 1
    if _flaky[order] == 1:
        raise stepwise.RetryAfterError("fraud-check API timed out", timedelta(milliseconds=200))
    return {"score": 0.02}


def charge_card(order: dict[str, Any]) -> dict[str, Any]:
    if not Path(os.environ["STEPWISE_TEST_FIXED"]).exists():
        parse_card_response({"status": "declined"})
    return {"charged": order["amount"], "currency": order["currency"]}


def parse_card_response(response: dict[str, Any]) -> None:
    raise stepwise.NonRetriableError(f"card processor answered {response['status']!r}; "
                                     "expected 'approved'")


async def alert_ops(ctx: stepwise.Context) -> None:
    ctx.logger.error("checkout failed: %s", (ctx.error or {}).get("message"))


@app.function(id="pack-parcel")
async def pack_parcel(ctx: stepwise.Context) -> dict[str, Any]:
    return {"parcel": f"P-{ctx.event.data['order']}"}


@app.function(id="checkout", trigger=stepwise.on_event("order.placed"), retries=1,
              on_failure=alert_ops)
async def checkout(ctx: stepwise.Context) -> dict[str, Any]:
    order_id = ctx.event.data["order"]
    ctx.logger.info("checking out order %s", order_id)
    order = await ctx.step.run("load-order", load_order, order_id)
    await ctx.step.run(stepwise.StepOptions("fraud-check", retries=2), call_fraud_check,
                       order_id)
    charged = await ctx.step.run("charge-card", charge_card, order)
    ctx.logger.info("charged %s %s", charged["charged"], charged["currency"])
    await ctx.step.sleep("cool-down", timedelta(milliseconds=300))
    parcel = await ctx.step.invoke("pack", function=pack_parcel, data={"order": order_id})
    return {"order": order_id, **charged, **parcel}


@app.function(id="send-receipt", trigger=stepwise.on_event("order.placed"),
              retention=stepwise.Retention(completed=timedelta(days=7)))
async def send_receipt(ctx: stepwise.Context) -> dict[str, Any]:
    await ctx.step.run("render", lambda: {"pdf": "receipt.pdf"})
    return {"sent": True}


def refuse(message: str) -> None:
    raise stepwise.NonRetriableError(message)


@app.function(id="post-ledger", trigger=stepwise.on_event("ledger.post"), retries=0)
async def post_ledger(ctx: stepwise.Context) -> None:
    await ctx.step.run("post", refuse, ctx.event.data["message"])


# Attempts and waits on the run page: a shelf count that fails twice (two different errors)
# and then answers; a supplier call that asks to be retried in 30 minutes, every time; a
# trial's drip that sleeps a week between two mails.
_counts: dict[str, int] = {}


def read_shelf_scanner(shelf: str) -> dict[str, Any]:
    _counts[shelf] = _counts.get(shelf, 0) + 1
    if _counts[shelf] == 1:
        raise ConnectionResetError("shelf scanner reset the connection")
    if _counts[shelf] == 2:
        raise TimeoutError("shelf scanner did not answer in 5 s")
    return {"shelf": shelf, "count": 17}


@app.function(id="stock-count", trigger=stepwise.on_event("stock.count"))
async def stock_count(ctx: stepwise.Context) -> dict[str, Any]:
    return await ctx.step.run(stepwise.StepOptions("count-shelf", retries=2),
                              read_shelf_scanner, ctx.event.data["shelf"])


def call_supplier() -> None:
    raise stepwise.RetryAfterError("supplier API rate limit: try again in 30 minutes",
                                   timedelta(minutes=30))


@app.function(id="supplier-sync", trigger=stepwise.on_event("supplier.sync"))
async def supplier_sync(ctx: stepwise.Context) -> None:
    await ctx.step.run("call-supplier", call_supplier)


@app.function(id="trial-drip", trigger=stepwise.on_event("trial.started"))
async def trial_drip(ctx: stepwise.Context) -> None:
    await ctx.step.run("send-welcome", lambda: {"sent": "welcome"})
    await ctx.step.sleep("wait-a-week", timedelta(days=7))
    await ctx.step.run("send-tips", lambda: {"sent": "tips"})
