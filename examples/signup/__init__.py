"""The signup flow: `user.signup` fans out to a welcome email, a mailing-list subscription and
a drip campaign.

- The mailing-list provider is flaky: it fails twice per user before it succeeds, and stepwise
  retries the step with backoff while the welcome email is never sent twice.
- The drip campaign sleeps 4 days (no process waits: the sleep is a timer in storage), then
  waits up to 3 days for the user's first `booking.created` (matched on `user_id`) and sends
  tips for whichever happened.

    stepwise dev examples.signup:app
    stepwise send user.signup '{"user_id": 42, "email": "ada@example.com"}'
    stepwise send booking.created '{"user_id": 42, "booking_id": "b-1"}'
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stepwise

app = stepwise.App("shop")

_list_attempts: dict[str, int] = {}


def load_user(user_id: int, email: str) -> dict[str, Any]:
    return {"id": user_id, "email": email, "name": email.split("@")[0].title()}


async def send_email(to: str, subject: str) -> dict[str, Any]:
    print(f"-> email to {to}: {subject}")
    return {"to": to, "subject": subject, "status": "sent"}


def subscribe(email: str) -> dict[str, Any]:
    """A flaky third-party call: fails twice for each address, then works."""
    _list_attempts[email] = _list_attempts.get(email, 0) + 1
    if _list_attempts[email] <= 2:
        raise ConnectionError(f"mailing-list API timed out (attempt {_list_attempts[email]})")
    return {"email": email, "list": "newsletter"}


async def notify_ops(ctx: stepwise.Context) -> None:
    error = ctx.error or {}
    ctx.logger.error("welcome email failed for good: %s", error.get("message"))


@app.function(id="send-welcome-email", trigger=stepwise.on_event("user.signup"),
              on_failure=notify_ops)
async def send_welcome_email(ctx: stepwise.Context) -> dict[str, Any]:
    user = await ctx.step.run("load-user", load_user, ctx.event.data["user_id"],
                              ctx.event.data["email"])
    sent = await ctx.step.run("send-welcome", send_email, user["email"],
                              f"Welcome, {user['name']}!")
    return {"email": sent["status"]}


@app.function(id="add-to-mailing-list", trigger=stepwise.on_event("user.signup"), retries=3)
def add_to_mailing_list(ctx: stepwise.Context) -> dict[str, Any]:
    subscription = ctx.step.run("subscribe", subscribe, ctx.event.data["email"])
    return {"subscribed": subscription["list"]}


@app.function(id="drip-campaign", trigger=stepwise.on_event("user.signup"))
async def drip_campaign(ctx: stepwise.Context) -> dict[str, Any]:
    email = ctx.event.data["email"]
    await ctx.step.sleep("wait-4-days", timedelta(days=4))
    booking = await ctx.step.wait_for_event("first-booking", event="booking.created",
                                            timeout=timedelta(days=3), match="data.user_id")
    if booking is None:
        await ctx.step.run("nudge", send_email, email, "Book your first session: 3 tips")
        return {"branch": "nudged"}
    await ctx.step.run("booking-tips", send_email, email,
                       f"Getting the most from booking {booking.data['booking_id']}")
    return {"branch": "booked", "booking": booking.data["booking_id"]}
