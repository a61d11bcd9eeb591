"""Inngest's REST API v1 reads and cancel, in Inngest's shapes, on both backends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stepwise
from stepwise.testing import Harness


def make_app() -> stepwise.App:
    app = stepwise.App("rest")

    @app.function(id="quick", trigger=stepwise.on_event("order.placed"))
    async def quick(ctx: stepwise.Context) -> Any:
        return {"total": ctx.event.data["total"]}

    @app.function(id="slow", trigger=stepwise.on_event("order.placed"))
    async def slow(ctx: stepwise.Context) -> Any:
        await ctx.step.sleep("later", timedelta(days=1))

    @app.function(id="broken", trigger=stepwise.on_event("order.placed"), retries=0)
    async def broken(ctx: stepwise.Context) -> Any:
        raise stepwise.NonRetriableError("card declined")

    return app


async def test_runs_of_an_event_a_run_and_cancel_in_inngests_shapes(db: str) -> None:
    async with Harness(make_app(), db) as h:
        event_id = await h.send("order.placed", {"total": 12})
        await h.settle(advance=False)
        answer = (await h.http.get(f"/v1/events/{event_id}/runs")).json()
        assert set(answer) == {"data", "metadata"} and answer["metadata"]["fetched_at"]
        by_function = {r["function_id"]: r for r in answer["data"]}
        assert {f: r["status"] for f, r in by_function.items()} == {
            "quick": "Completed", "slow": "Running", "broken": "Failed"}
        quick = by_function["quick"]
        assert quick["output"] == {"total": 12} and quick["event_id"] == event_id
        assert quick["ended_at"] and quick["run_started_at"]
        assert by_function["broken"]["output"]["message"] == "card declined"
        assert "output" not in by_function["slow"] and by_function["slow"]["ended_at"] is None

        one = (await h.http.get(f"/v1/runs/{quick['run_id']}")).json()["data"]
        assert one == quick
        cancelled = await h.http.delete(f"/v1/runs/{by_function['slow']['run_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["data"]["status"] == "Cancelled"
        again = await h.http.delete(f"/v1/runs/{by_function['slow']['run_id']}")
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]
        event = (await h.http.get(f"/v1/events/{event_id}")).json()["data"]
        assert (event["id"], event["name"], event["data"]) == (event_id, "order.placed",
                                                               {"total": 12})
        for path in ("/v1/runs/nope", f"/v1/events/{event_id}x/runs", "/v1/events/nope"):
            missing = await h.http.get(path)
            assert missing.status_code == 404 and "not found" in missing.json()["error"]
