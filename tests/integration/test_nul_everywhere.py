"""U+0000 from outside reaches every column a JSON string can: PostgreSQL's TEXT and JSONB
cannot hold it raw, so each path either keeps it (escaped inside stored JSON, or hashed into a
key) and reads it back as sent, or refuses it at the door with a 4xx naming the field. Never a
run wedged, a 500, or a listing that breaks for everyone. The values come in as an attacker's
or a buggy client's would: event data, flow-control keys, waits and cancels, invokes, sent
events, errors, signals, and (through a scripted SDK app) everything an SDK sync and an SDK's
answers carry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stepwise
from stepwise.testing import Harness

NUL = "a\u0000b"


def _python_app() -> stepwise.App:
    app = stepwise.App("nul")
    key = "event.data.k"

    def keyed(fid: str, **options: Any) -> None:
        @app.function(id=fid, trigger=stepwise.on_event("nul.go"), retries=0, **options)
        async def f(ctx: stepwise.Context) -> Any:
            return await ctx.step.run("echo", lambda: {"k": ctx.event.data["k"]})

    keyed("idempotent", idempotency=key)
    keyed("concurrent", concurrency=stepwise.Concurrency(limit=1, key=key))
    keyed("throttled", throttle=stepwise.Throttle(limit=5, period=timedelta(minutes=1),
                                                  key=key))
    keyed("rate-limited", rate_limit=stepwise.RateLimit(limit=5, period=timedelta(minutes=1),
                                                        key=key))
    keyed("debounced", debounce=stepwise.Debounce(period=timedelta(seconds=5), key=key))
    keyed("batched", batch=stepwise.Batch(max_size=2, timeout=timedelta(seconds=5), key=key))
    keyed("singleton", singleton=stepwise.Singleton(mode="skip", key=key))

    @app.function(id="cancelled", trigger=stepwise.on_event("nul.go"), retries=0,
                  cancel_on=stepwise.CancelOn(event="nul.stop", match="data.k"))
    async def cancelled(ctx: stepwise.Context) -> None:
        await ctx.step.sleep("nap", timedelta(days=1))

    @app.function(id="waiting", trigger=stepwise.on_event("nul.go"), retries=0)
    async def waiting(ctx: stepwise.Context) -> Any:
        got = await ctx.step.wait_for_event("reply", event="nul.reply", match="data.k",
                                            timeout=timedelta(days=1))
        return None if got is None else got.data

    @app.function(id="invoker", trigger=stepwise.on_event("nul.go"), retries=0)
    async def invoker(ctx: stepwise.Context) -> Any:
        sent = await ctx.step.send_event("send", {"name": "nul.sent",
                                                  "data": {"k": ctx.event.data["k"]}})
        called = await ctx.step.invoke("call", function="echo", data={"k": ctx.event.data["k"]})
        return {"called": called, "sent": len(sent["ids"]) if isinstance(sent, dict) else 1}

    @app.function(id="echo", trigger=stepwise.on_event("nul.never"), retries=0)
    async def echo(ctx: stepwise.Context) -> Any:
        return ctx.event.data

    @app.function(id="wait-name", trigger=stepwise.on_event("nul.go"), retries=0)
    async def wait_name(ctx: stepwise.Context) -> Any:
        return await ctx.step.wait_for_event("w", event=ctx.event.data["k"],
                                             timeout=timedelta(hours=1))

    @app.function(id="wait-if", trigger=stepwise.on_event("nul.go"), retries=0)
    async def wait_if(ctx: stepwise.Context) -> Any:
        return await ctx.step.wait_for_event(
            "w", event="nul.reply", timeout=timedelta(hours=1),
            if_=f"async.data.k == '{ctx.event.data['k']}'")

    @app.function(id="invoke-nul", trigger=stepwise.on_event("nul.go"), retries=0)
    async def invoke_nul(ctx: stepwise.Context) -> Any:
        return await ctx.step.invoke("i", function=ctx.event.data["k"], data={})

    def boom() -> None:
        raise ValueError(NUL)

    @app.function(id="odd-error", trigger=stepwise.on_event("nul.go"), retries=1)
    async def odd_error(ctx: stepwise.Context) -> None:
        await ctx.step.run("boom", boom)

    return app


async def test_a_nul_in_keys_waits_cancels_invokes_and_errors_is_kept_or_refused(
        db: str) -> None:
    app = _python_app()
    async with Harness(app, db) as h:
        first = await h.send("nul.go", {"k": NUL})
        await h.settle(advance=False)
        second = await h.send("nul.go", {"k": NUL})  # same idempotency and singleton key
        await h.settle(advance=False)
        await h.send("nul.reply", {"k": NUL})
        await h.send("nul.stop", {"k": NUL})
        await h.settle()
        runs = {fid: await h.run_for(first, fid) for fid in (
            "idempotent", "concurrent", "throttled", "rate-limited", "singleton", "cancelled",
            "waiting", "invoker", "odd-error", "wait-name", "wait-if", "invoke-nul")}
        listed = (await h.http.get("/api/v1/runs", params={"limit": 200})).json()["runs"]
        for path in ("/api/v1/functions", "/api/v1/events", "/api/v1/apps",
                     "/api/v1/workers", "/metrics"):
            answer = await h.http.get(path)
            assert answer.status_code == 200, (path, answer.text)
        by_data = await h.http.get("/api/v1/runs", params={"event_data": f"k={NUL}"})
        assert by_data.status_code == 400  # a NUL in the query is refused at the door
        events = (await h.http.get("/api/v1/events", params={"name": "nul.sent"})).json()
    for fid in ("idempotent", "concurrent", "throttled", "rate-limited", "singleton"):
        assert runs[fid]["status"] == "completed", (fid, runs[fid])
        assert runs[fid]["output"] == {"k": NUL}, (fid, runs[fid])
    assert runs["cancelled"]["status"] == "cancelled", runs["cancelled"]
    assert runs["waiting"]["status"] == "completed" and runs["waiting"]["output"] == {"k": NUL}
    assert runs["invoker"]["status"] == "completed", runs["invoker"]
    assert runs["invoker"]["output"]["called"] == {"k": NUL}
    assert [e["data"] for e in events["events"]] == [{"k": NUL}, {"k": NUL}]
    error = runs["odd-error"]["error"]
    assert runs["odd-error"]["status"] == "failed" and error["message"] == NUL, error
    assert [f["error"]["message"] for f in runs["odd-error"]["failures"]] == [NUL, NUL]
    # What a wait or an invoke would store as plain text: the run fails, naming it (before,
    # PostgreSQL refused the write and the run stayed running).
    for fid, words in (("wait-name", "without U+0000"), ("wait-if", "must not contain U+0000"),
                       ("invoke-nul", "no function has the id")):
        assert runs[fid]["status"] == "failed", (fid, runs[fid])
        assert words in runs[fid]["error"]["message"], (fid, runs[fid]["error"])
    second_runs = {r["function_id"] for r in listed if r.get("event_id") == second}
    assert "idempotent" not in second_runs  # the NUL key matched the first run's
    assert {"debounced", "batched"} <= {r["function_id"] for r in listed}


SDK_URL = "http://nul.test/api/inngest"


def _sdk_function(fid: str, **more: Any) -> dict[str, Any]:
    url = f"{SDK_URL}?fnId={fid}&stepId=step"
    return {"id": fid, "name": f"{fid} {NUL}", "triggers": [{"event": "nul.sdk"}],
            "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 0},
                               "runtime": {"type": "http", "url": url}}}, **more}


#: What the scripted SDK app answers each function's calls with, by how many steps are
#: memoized: NULs in every string an SDK's answer carries into a column.
SDK_ANSWERS: dict[str, list[tuple[int, Any]]] = {
    "nul-step": [(206, [{"op": "StepRun", "id": "s1", "displayName": f"shown {NUL}",
                         "data": {"k": NUL}}]),
                 (200, {"done": NUL})],
    "nul-step-id": [(206, [{"op": "StepRun", "id": f"id {NUL}", "data": 1}]), (200, None)],
    "nul-wait": [(206, [{"op": "WaitForEvent", "id": "w1", "displayName": NUL,
                         "opts": {"event": "nul.sdk.reply", "timeout": "1h",
                                  "if": f"async.data.k == '{NUL}'"}}]),
                 (200, "waited")],
    "nul-wait-name": [(206, [{"op": "WaitForEvent", "id": "w2",
                              "opts": {"event": f"nul {NUL}", "timeout": "1h"}}]),
                      (200, "waited")],
    "nul-signal": [(206, [{"op": "WaitForSignal", "id": "g1",
                           "opts": {"signal": f"signal {NUL}", "timeout": "1h"}}]),
                   (200, "signalled")],
    "nul-invoke": [(206, [{"op": "InvokeFunction", "id": "i1",
                           "opts": {"function_id": f"nul-sdk-{NUL}",
                                    "payload": {"data": {"k": NUL}}}}]),
                   (200, "invoked")],
    "nul-sleep": [(206, [{"op": "Sleep", "id": "z1", "name": "1s", "displayName": NUL}]),
                  (200, "slept")],
    "nul-error": [(500, {"name": f"Odd {NUL}", "message": NUL, "stack": NUL})],
    "nul-step-error": [(206, [{"op": "StepFailed", "id": "e1", "displayName": NUL,
                               "error": {"name": NUL, "message": NUL, "stack": NUL}}]),
                       (500, {"name": NUL, "message": NUL})],
}


async def test_a_nul_in_an_sdk_sync_and_in_an_sdk_s_answers_is_kept_or_refused(
        db: str) -> None:
    import asyncio
    import json

    import httpx

    from stepwise.remote.executor import HttpExecutor
    from stepwise.worker import Worker

    async def app(request: httpx.Request) -> httpx.Response:
        fid = request.url.params["fnId"]
        body = json.loads(request.content)
        answers = SDK_ANSWERS[fid]
        status, reply = answers[min(len(body["steps"]), len(answers) - 1)]
        return httpx.Response(status, json=reply, headers={"x-inngest-no-retry": "true"})

    async with Harness(stepwise.App("py"), db) as h:
        sync = {"appName": "nul-sdk", "url": SDK_URL, "v": "0.1", "sdk": f"py:{NUL}",
                "framework": f"fast {NUL}", "functions": [
                    _sdk_function(f"nul-sdk-{fid}") for fid in SDK_ANSWERS] + [
                    _sdk_function("nul-sdk-flow", concurrency=[{"limit": 1,
                                                                  "key": f"'{NUL}'"}],
                                  idempotency=f"event.data.k + '{NUL}'",
                                  cancel=[{"event": "nul.sdk.stop",
                                           "if": f"event.data.k == '{NUL}'"}],
                                  debounce={"period": "1s", "key": f"'{NUL}'"},
                                  **{f"extra {NUL}": 1})]}
        synced = await h.http.post("/fn/register", json=sync)
        assert synced.status_code == 200, synced.text
        bad_trigger = await h.http.post("/fn/register", json={
            **sync, "appName": "nul-sdk-2", "functions": [{
                **_sdk_function("nul-sdk-2-f"), "triggers": [{"event": f"nul {NUL}"}]}]})
        assert bad_trigger.status_code in (200, 400), bad_trigger.text
        bad_id = await h.http.post("/fn/register", json={
            **sync, "appName": "nul-sdk-3", "functions": [_sdk_function(f"id {NUL}")]})
        assert bad_id.status_code == 400 and "error" in bad_id.json(), bad_id.text

        for fid in list(SDK_ANSWERS):
            SDK_ANSWERS[f"nul-sdk-{fid}"] = SDK_ANSWERS[fid]
        executor = HttpExecutor("nul-sdk", h.engine,
                                client=httpx.AsyncClient(transport=httpx.MockTransport(app)))
        worker = Worker(executor, h.storage, poll_interval=0.02)
        await worker.start()
        try:
            event_id = await h.send("nul.sdk", {"k": NUL})
            runs: dict[str, Any] = {}
            for _ in range(500):  # bounded: each run ends after a call or two
                runs = {r["function_id"]: r for r in await h.runs(event_id=event_id)}
                if len(runs) == 10 and all(r["status"] in ("completed", "failed")
                                           for r in runs.values()):
                    break
                h.clock.advance(1)  # the sleep's second passes
                worker.notify()
                await asyncio.sleep(0.02)
            details = {fid.removeprefix("nul-sdk-"): await h.run(r["id"])
                       for fid, r in runs.items()}
            for path in ("/api/v1/functions", "/api/v1/apps", "/api/v1/runs",
                         "/api/v1/events"):
                answer = await h.http.get(path)
                assert answer.status_code == 200, (path, answer.text)
            app_row = [a for a in (await h.http.get("/api/v1/apps")).json()["apps"]
                       if a["id"] == "nul-sdk"]
        finally:
            await worker.stop(1.0)
            await executor.stop()
    shown = "a\ufffdb"  # a display name is plain text: U+0000 reads as U+FFFD
    assert len(app_row) == 1, app_row
    step = details["nul-step"]
    assert step["status"] == "completed" and step["output"] == {"done": NUL}, step
    assert [(s["name"], s["output"]) for s in step["steps"]] == [(f"shown {shown}",
                                                                  {"k": NUL})]
    assert details["nul-sleep"]["status"] == "completed", details["nul-sleep"]
    assert [s["name"] for s in details["nul-sleep"]["steps"]] == [shown]
    error = details["nul-error"]
    assert error["status"] == "failed" and error["error"]["name"] == f"Odd {NUL}", error
    assert error["error"]["message"] == NUL
    failed_step = details["nul-step-error"]
    assert failed_step["status"] == "failed", failed_step
    assert [(s["name"], s["error"]["message"]) for s in failed_step["steps"]] == [(shown, NUL)]
    # What a wait, a signal or an invoke would store as plain text: the run fails, naming it.
    for fid, field in (("nul-step-id", ": id holds"), ("nul-wait", ": opts.if holds"),
                       ("nul-wait-name", ": opts.event holds"),
                       ("nul-signal", ": opts.signal holds"),
                       ("nul-invoke", ": opts.function_id holds")):
        run = details[fid]
        assert run["status"] == "failed", (fid, run)
        assert run["error"]["name"] == "ProtocolError" and field in run["error"]["message"], \
            (fid, run["error"])
    flow = details["flow"]
    assert flow["status"] == "failed" and flow["error"]["name"] == "FunctionNotRunnable"
