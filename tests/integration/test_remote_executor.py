"""The HTTP executor against an app answered in-process (httpx's MockTransport): how many calls
it makes to one app at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import httpx
import pytest

from stepwise.definition import FunctionDefinition
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


async def test_an_app_that_never_answers_fails_the_attempt_after_the_call_timeout(
        db: str) -> None:
    """The app accepts the connection and says nothing: each attempt fails with CallTimeout
    after the server's SDK call timeout (not the 15-minute attempt timeout); a function's
    `timeouts.finish` shortens a call's limit further."""
    writers: list[asyncio.StreamWriter] = []
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/inngest?fnId=mute&stepId=step"
    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage)
    synced = registration.parse({"appName": "mute", "url": url, "functions": [
        {"id": "mute", "triggers": [{"event": "go"}],
         "steps": {"step": {"retries": {"attempts": 1},
                            "runtime": {"type": "http", "url": url}}}},
        {"id": "short", "triggers": [{"event": "never"}], "timeouts": {"finish": "2s"},
         "steps": {"step": {"runtime": {"type": "http", "url": url}}}}]})
    await engine.register("mute", synced.functions)
    executor = HttpExecutor("mute", engine, call_timeout_s=0.5)
    worker = Worker(executor, storage, concurrency=2, poll_interval=0.01)
    began = asyncio.get_running_loop().time()
    try:
        await worker.start()
        assert executor.call_timeout(executor.definitions["short"]) == 0.5
        assert HttpExecutor("mute", engine, call_timeout_s=60).call_timeout(
            synced.functions[1]) == 2.0
        await engine.ingest([StoredEvent("e1", "go", "{}", engine.clock.now_ms())])
        for _ in range(1500):
            runs = await engine.list_runs({}, 10)
            if runs and runs[0]["status"] == "failed":
                break
            await asyncio.sleep(0.01)
        took = asyncio.get_running_loop().time() - began
        [run] = runs
        assert run["status"] == "failed", run
        error = json.loads(run["error"])
        assert error["name"] == "CallTimeout" and "within 0.5 s" in error["message"], error
        assert len(writers) == 2  # the attempt and its retry, each cut off at 0.5 s
        assert took < 14, took  # 2 x 0.5 s and a retry's backoff, not 2 x 15 minutes
    finally:
        await worker.stop()
        await storage.close()
        release.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # the handlers close their connections


async def test_sdk_apps_are_reloaded_only_when_their_definitions_change(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`RemoteApps` checks every second which SDK apps to serve. It read and decoded every
    stored function each time: with 30 apps of 1,000 functions, `stepwise dev`'s loop (its HTTP
    server's too) was held for seconds (bench/sync_cost.py). Now an app's functions are read
    when the app's definitions changed, and only that app's."""
    from stepwise.engine import definitions
    from stepwise.remote.executor import RemoteApps

    def sync(app: str, functions: list[str]) -> list[FunctionDefinition]:
        url = f"http://{app}.test/api/inngest"
        return registration.parse({"appName": app, "url": url, "functions": [{
            "id": f"{app}-{f}", "triggers": [{"event": f"{app}.go"}],
            "steps": {"step": {"runtime": {"type": "http", "url": f"{url}?fnId={f}"}}}}
            for f in functions]}).functions

    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage)
    await engine.register("shop", sync("shop", ["a", "b"]))
    await engine.register("mail", sync("mail", ["send"]))
    remote = RemoteApps(storage, poll_interval=0.05)
    read: list[str] = []
    real = definitions.app_functions

    def counted(tx: Any, app_id: str) -> list[dict[str, Any]]:
        read.append(app_id)
        return real(tx, app_id)

    async def everything() -> list[dict[str, Any]]:
        raise AssertionError("every stored function was read")

    monkeypatch.setattr(definitions, "app_functions", counted)
    monkeypatch.setattr(remote.engine, "list_functions", everything)
    try:
        await remote.tick()
        assert sorted(remote.executors) == ["mail", "shop"]
        assert remote.executors["shop"].functions() == ["shop-a", "shop-b"]
        read.clear()
        await remote.tick()
        await remote.tick()
        assert read == []  # nothing changed: nothing read
        assert not await engine.register("mail", sync("mail", ["send"]))  # the same sync
        await remote.tick()
        assert read == []
        await asyncio.sleep(0.002)  # a later change time than the first sync's
        assert await engine.register("shop", sync("shop", ["a", "c"]))
        await remote.tick()
        assert read == ["shop"]  # only the app that changed
        assert remote.executors["shop"].functions() == ["shop-a", "shop-c"]
    finally:
        await remote.stop(1.0)
        await storage.close()
