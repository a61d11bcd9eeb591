"""An SDK app in cloud mode (no INNGEST_DEV): it syncs with its signing key's hash, accepts
only calls signed with the key (or INNGEST_SIGNING_KEY_FALLBACK's), and signs its answers.
SIGNED_APP_ID names it (several can run at once)."""

from __future__ import annotations

import os

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id=os.environ.get("SIGNED_APP_ID", "py-signed"))


@client.create_function(fn_id="charge", trigger=inngest.TriggerEvent(event="payment.due"),
                        retries=2)
async def charge(ctx: inngest.Context) -> str:
    amount = await ctx.step.run("amount", lambda: 42)
    return f"charged {amount} for {ctx.event.data['order']}"


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [charge])
