"""`step.ai.infer` with Inngest's Python SDK (PyPI), as inngest-py's own `ai_infer` case writes
it: the server makes the provider request (opcode AIGateway). Served by FastAPI for
tests/sdk/test_gateways.py, with a fake provider at `event.data.base`."""

from __future__ import annotations

from typing import Any

import fastapi
import inngest
import inngest.fast_api
from inngest.experimental import ai

client = inngest.Inngest(app_id="py-gateways", is_production=False)
AI_KEY = "sk-py-test-9f8e7d6c5b"


@client.create_function(fn_id="summarize", retries=1,
                        trigger=inngest.TriggerEvent(event="py.article.published"))
async def summarize(ctx: inngest.Context) -> Any:
    adapter = ai.openai.Adapter(auth_key=AI_KEY, base_url=f"{ctx.event.data['base']}/v1",
                                model="gpt-4o-mini", headers={"x-team": "news"})
    answer = await ctx.step.ai.infer("summarize", adapter=adapter, body={
        "messages": [{"role": "user", "content": ctx.event.data["text"]}]})
    choices: Any = answer["choices"]
    return choices[0]["message"]["content"]


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [summarize])
