"""The HTTP executor against an app answered in-process (httpx's MockTransport): how many calls
it makes to one app at once."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx

from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.remote import registration
from stepwise.remote.executor import HttpExecutor
from stepwise.storage import open_storage
from stepwise.worker import Worker

URL = "http://app.test/api/inngest?fnId=fan-out&stepId=step"
PLANNED = [hashlib.sha1(f"part-{i}".encode()).hexdigest() for i in range(6)]


async def test_calls_to_one_app_are_bounded_however_many_steps_are_planned(db: str) -> None:
    in_flight, most = 0, 0

    async def app(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        body = json.loads(request.content)
        step = request.url.params["stepId"]
        if step == "step":  # discovery: plan six parallel steps, then finish
            if len(body["steps"]) == len(PLANNED):
                return httpx.Response(200, json=sorted(v["data"] for v in body["steps"].values()))
            return httpx.Response(206, json=[{"op": "StepPlanned", "id": sid} for sid in PLANNED])
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(206, json=[{"op": "StepRun", "id": step, "data": step[:4]}])

    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage)
    synced = registration.parse({"appName": "fan", "url": URL, "functions": [{
        "id": "fan-out", "triggers": [{"event": "go"}],
        "steps": {"step": {"runtime": {"type": "http", "url": URL}}}}]})
    await engine.register("fan", synced.functions)
    executor = HttpExecutor("fan", engine, max_calls=2,
                            client=httpx.AsyncClient(transport=httpx.MockTransport(app)))
    worker = Worker(executor, storage, concurrency=4, poll_interval=0.01)
    try:
        await worker.start()
        await engine.ingest([StoredEvent("e1", "go", "{}", engine.clock.now_ms())])
        for _ in range(500):
            runs = await engine.list_runs({}, 10)
            if runs and runs[0]["status"] == "completed":
                break
            await asyncio.sleep(0.01)
        assert runs[0]["status"] == "completed"
        assert json.loads(runs[0]["output"]) == sorted(sid[:4] for sid in PLANNED)
        assert most == 2  # six planned steps, two calls at a time
    finally:
        await worker.stop()
        await storage.close()
