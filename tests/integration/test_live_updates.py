"""The change mark behind the dashboard's live updates, on both backends: equal while nothing
changes, different after each kind of change a page shows (an event, a run created, a step
stored, a run's end, a worker arriving or falling silent); and the stream's own bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepwise
from stepwise.server import live
from stepwise.testing import Harness


def make_app() -> stepwise.App:
    app = stepwise.App("marks")

    @app.function(id="one-step", trigger=stepwise.on_event("go"), retries=0)
    async def one_step(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("only", lambda: 1)

    return app


def _changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {topic for topic, keys in live.TOPICS.items()
            if any(before[k] != after[k] for k in keys)}


async def test_the_change_mark_moves_with_what_the_dashboard_shows(db: str) -> None:
    async with Harness(make_app(), db) as h:
        await h.settle()
        mark = await h.engine.change_mark()
        assert set(mark) == {k for keys in live.TOPICS.values() for k in keys}
        assert await h.engine.change_mark() == mark  # nothing changed: nothing to tell

        h.clock.advance(1)
        await h.send("go")
        await h.settle(advance=False)
        done = await h.engine.change_mark()
        assert {"events", "runs"} <= _changed(mark, done) <= {"events", "runs", "workers"}

        # A worker arriving, then falling silent without a goodbye (its expiry passes).
        await h.engine.heartbeat({"id": "w-extra", "app_id": "marks", "host": "h", "pid": 1,
                                  "functions": ["one-step"], "slots": 4, "in_use": 0},
                                 ttl_ms=30_000)
        arrived = await h.engine.change_mark()
        assert _changed(done, arrived) == {"workers"}
        h.clock.advance(3600)
        silent = await h.engine.change_mark()
        assert silent["live_workers"] < arrived["live_workers"]
        await h.worker.stop(grace=1.0)  # its goodbye: gone from the workers page
        assert _changed(silent, await h.engine.change_mark()) == {"workers"}


async def test_a_step_stored_while_the_run_goes_on_moves_the_mark(db: str) -> None:
    """The run stays `running` throughout: only its stored steps tell the change."""
    reached, stored, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()
    app = stepwise.App("steps")

    @app.function(id="two-steps", trigger=stepwise.on_event("go"), retries=0)
    async def two_steps(ctx: stepwise.Context) -> Any:
        reached.set()
        await stored.wait()
        await ctx.step.run("first", lambda: 1)
        finish.set()
        await asyncio.Event().wait()  # runs on until the harness stops

    async with Harness(app, db) as h:
        await h.send("go")
        await asyncio.wait_for(reached.wait(), 10)
        before = await h.engine.change_mark()
        assert before["running"] == 1 and before["steps"] == 0
        stored.set()
        await asyncio.wait_for(finish.wait(), 10)
        after = await h.engine.change_mark()
        assert after["running"] == 1 and after["steps"] == 1
        assert "steps" in _changed(before, after) and "runs" not in _changed(before, after)


async def test_past_its_bound_the_stream_is_refused_with_a_json_503(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "MAX_STREAMS", 0)
    async with Harness(make_app(), db) as h:
        response = await h.http.get("/api/v1/live")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        assert "too many live streams" in response.json()["error"]
