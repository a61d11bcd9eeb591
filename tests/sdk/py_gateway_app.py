"""`step.ai.infer` with Inngest's Python SDK (PyPI): the server makes the provider request
(opcode AIGateway). `anthropic-infer` is inngest-py's own `ai_infer` case
(tests/test_inngest/test_function/cases/ai_infer.py) as it is written there. Served by FastAPI
for tests/sdk/test_gateways.py, with a fake provider at `event.data.base`."""

from __future__ import annotations

from typing import Any

import fastapi
import inngest
import inngest.fast_api
from inngest.experimental import ai

client = inngest.Inngest(app_id="py-gateways", is_production=False)
AI_KEY = "sk-py-test-9f8e7d6c5b"
#: inngest-py's case: the request body (the adapter fills in the model when it is left out).
API_REQ_BODY = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 100,
                "model": "claude-3-5-sonnet-latest"}
outputs: dict[str, Any] = {}


@client.create_function(fn_id="summarize", retries=1,
                        trigger=inngest.TriggerEvent(event="py.article.published"))
async def summarize(ctx: inngest.Context) -> Any:
    adapter = ai.openai.Adapter(auth_key=AI_KEY, base_url=f"{ctx.event.data['base']}/v1",
                                model="gpt-4o-mini", headers={"x-team": "news"})
    answer = await ctx.step.ai.infer("summarize", adapter=adapter, body={
        "messages": [{"role": "user", "content": ctx.event.data["text"]}]})
    choices: Any = answer["choices"]
    return choices[0]["message"]["content"]


@client.create_function(fn_id="anthropic-infer", retries=0,
                        trigger=inngest.TriggerEvent(event="py.anthropic.infer"))
async def anthropic_infer(ctx: inngest.Context) -> None:
    adapter = ai.anthropic.Adapter(auth_key="sk-ant-api03-000000",
                                   base_url=f"{ctx.event.data['base']}/v1",
                                   headers={"x-my-header": "my-value"},
                                   model="claude-3-5-sonnet-latest")
    body = API_REQ_BODY.copy()
    del body["model"]
    outputs[ctx.run_id] = await ctx.step.ai.infer("do-the-thing", adapter=adapter, body=body)


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [summarize, anthropic_infer])


@app.get("/test/output/{run_id}")
def output(run_id: str) -> Any:
    """What `step.ai.infer` returned to the code of run `run_id`."""
    return outputs.get(run_id)
