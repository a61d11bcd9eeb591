"""A run's detail says when it waits to retry (`waiting_to_retry`): queued after a failed
attempt of one of its steps (that step `retrying`, its `ended_at` when the retry is due) or of
its function body, until the retry runs; a run queued by a replay is not waiting to retry.
The dashboard's run page shows it, with each step's attempts and the waits between them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import stepwise
from stepwise.testing import Harness


def make_app() -> tuple[stepwise.App, dict[str, int]]:
    app = stepwise.App("attempts")
    calls: dict[str, int] = {}

    def count(name: str) -> int:
        calls[name] = calls.get(name, 0) + 1
        return calls[name]

    def supplier() -> dict[str, str]:
        if count("supplier") == 1:
            raise stepwise.RetryAfterError("rate limited", timedelta(minutes=30))
        return {"synced": "yes"}

    @app.function(id="step-retry", trigger=stepwise.on_event("step.retry"))
    async def step_retry(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("call-supplier", supplier)

    @app.function(id="body-retry", trigger=stepwise.on_event("body.retry"))
    async def body_retry(ctx: stepwise.Context) -> Any:
        if count("body") == 1:
            raise RuntimeError("the body failed once")
        return "done"

    def refuse() -> None:
        raise stepwise.NonRetriableError("refused")

    @app.function(id="refused", trigger=stepwise.on_event("refused"), retries=0)
    async def refused(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("post", refuse)

    return app, calls


def at(iso: str | None) -> datetime:
    assert iso is not None
    return datetime.fromisoformat(iso)


async def test_a_run_waiting_to_retry_a_step_or_its_body_says_so(db: str) -> None:
    app, calls = make_app()
    async with Harness(app, db) as h:
        step_event = await h.send("step.retry")
        body_event = await h.send("body.retry")
        refused_event = await h.send("refused")
        await h.settle(advance=False)  # every run did what it could now; no retry is due

        run = await h.run_for(step_event, "step-retry")
        assert run["status"] == "queued" and run["waiting_to_retry"] is True
        [step] = run["steps"]
        [failure] = run["failures"]
        assert step["status"] == "retrying" and step["attempts"] == 1
        assert failure["step_id"] == "call-supplier" and failure["attempt"] == 1
        assert failure["error"]["name"] == "RetryAfterError"
        # The retry is due 30 minutes after the attempt failed: the step's ended_at.
        assert at(step["ended_at"]) - at(failure["ended_at"]) == timedelta(minutes=30)

        body = await h.run_for(body_event, "body-retry")
        assert body["status"] == "queued" and body["waiting_to_retry"] is True
        assert [(f["step_id"], f["attempt"]) for f in body["failures"]] == [(None, 1)]
        # Lists say it too (from the run's retry count), and the event's runs.
        listed = {r["function_id"]: r for r in await h.runs()}
        assert {f: (r["status"], r["waiting_to_retry"]) for f, r in listed.items()} == {
            "step-retry": ("queued", True), "body-retry": ("queued", True),
            "refused": ("failed", False)}
        linked = (await h.http.get(f"/api/v1/events/{step_event}")).json()["runs"]
        assert [r["waiting_to_retry"] for r in linked] == [True]

        failed = await h.run_for(refused_event, "refused")
        assert failed["status"] == "failed" and failed["waiting_to_retry"] is False
        replayed = (await h.http.post(f"/api/v1/runs/{failed['id']}/replay")).json()
        assert replayed["status"] == "queued" and replayed["failures"]
        assert replayed["waiting_to_retry"] is False  # queued again by hand, not retrying

        await h.settle()  # the clock moves on to the retries
        assert calls == {"supplier": 2, "body": 2}
        run = await h.run(run["id"])
        assert run["status"] == "completed" and run["waiting_to_retry"] is False
        [step] = run["steps"]
        # The step keeps its first attempt's start; the attempt that succeeded started after
        # the wait (`attempt_started_at`) and ended after its start.
        assert step["status"] == "completed" and step["attempts"] == 2
        assert step["started_at"] == failure["started_at"]
        assert at(step["attempt_started_at"]) >= at(failure["ended_at"]) + timedelta(minutes=30)
        assert at(step["ended_at"]) >= at(step["attempt_started_at"])
        body = await h.run(body["id"])
        assert body["status"] == "completed" and body["waiting_to_retry"] is False
        listed = await h.runs(function="step-retry")
        assert listed[0]["waiting_to_retry"] is False
