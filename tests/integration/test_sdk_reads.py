"""What an SDK's `use_api` reads (`/v0/runs/{id}/actions` and `/batch`) serve: an SDK
function's run while it executes, and nothing else (a Python function's run, a run not
executing): the signing key every SDK app holds reads no more than that."""

from __future__ import annotations

import stepwise
from stepwise.events import StoredEvent
from stepwise.remote import registration
from stepwise.testing import Harness

URL = "http://app.test/api/inngest?fnId=sdk-fn&stepId=step"


async def test_sdk_reads_serve_only_sdk_runs_executing_now(db: str) -> None:
    app = stepwise.App("py")

    @app.function(id="py-fn", trigger=stepwise.on_event("go"))
    async def py_fn(ctx: stepwise.Context) -> None:
        return None

    async with Harness(app, db) as h:
        engine = h.engine
        await h.worker.stop()  # nothing executes here but what the test leases
        synced = registration.parse({"appName": "sdk", "url": URL, "functions": [{
            "id": "sdk-fn", "triggers": [{"event": "go"}],
            "steps": {"step": {"runtime": {"type": "http", "url": URL}}}}]})
        await engine.register("sdk", synced.functions)
        await engine.ingest([StoredEvent("e1", "go", '{"secret": 1}', engine.clock.now_ms())])
        runs = {r["function_id"]: r["id"] for r in await engine.list_runs({}, 10)}
        assert set(runs) == {"py-fn", "sdk-fn"}

        async def status(run_id: str, part: str) -> int:
            return int((await h.http.get(f"/v0/runs/{run_id}/{part}")).status_code)

        for run_id in runs.values():  # queued: not executing
            assert await status(run_id, "actions") == 404
        await engine.lease("sdk", ["sdk-fn"], "w", 1, 60_000)
        await engine.lease("py", ["py-fn"], "w", 1, 60_000)
        assert await status(runs["sdk-fn"], "actions") == 200
        batch = (await h.http.get(f"/v0/runs/{runs['sdk-fn']}/batch")).json()
        assert batch[0]["data"] == {"secret": 1}
        for part in ("actions", "batch"):  # a Python function's run, executing: not served
            assert await status(runs["py-fn"], part) == 404


async def test_a_sync_at_a_host_the_server_does_not_allow_is_refused(db: str) -> None:
    """`--sdk-allow-host`: the app's URL and every function's must be at an allowed host;
    otherwise 403 naming the host, and nothing is stored."""
    from stepwise.access import Access

    def body(app_url: str, step_url: str) -> dict[str, object]:
        return {"appName": "shop", "url": app_url, "functions": [{
            "id": "shop-f", "triggers": [{"event": "go"}],
            "steps": {"step": {"runtime": {"type": "http", "url": step_url}}}}]}

    good = "http://app.internal:3000/api/inngest"
    access = Access(dev_mode=True, sdk_hosts=frozenset({"app.internal"}))
    async with Harness(stepwise.App("py"), db, access=access) as h:
        for app_url, step_url, host in (
                ("http://evil.example/api/inngest", good, "evil.example"),
                (good, "https://collector.example/x?fnId=shop-f&stepId=step",
                 "collector.example")):
            refused = await h.http.post("/fn/register", json=body(app_url, step_url))
            assert refused.status_code == 403, refused.text
            assert repr(host) in refused.json()["error"] and "--sdk-allow-host" in \
                refused.json()["error"]
        assert [f for f in await h.engine.list_functions() if f["app_id"] == "shop"] == []
        synced = await h.http.post("/fn/register", json=body(good, good + "?fnId=shop-f"))
        assert synced.status_code == 200, synced.text
        assert [f["id"] for f in await h.engine.list_functions()
                if f["app_id"] == "shop"] == ["shop-f"]
