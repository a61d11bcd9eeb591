"""Events API, run search, and the links a run shows (its event, invoked and on_failure runs)."""

from __future__ import annotations

from typing import Any

import stepwise
from stepwise.testing import Harness


def make_app() -> stepwise.App:
    app = stepwise.App("obs")

    @app.function(id="child", trigger=stepwise.on_event("never"))
    async def child(ctx: stepwise.Context) -> Any:
        return {"doubled": ctx.event.data["n"] * 2}

    def boom() -> None:
        raise stepwise.NonRetriableError("card declined")

    async def record(ctx: stepwise.Context) -> str:
        return "recorded"

    @app.function(id="parent", trigger=stepwise.on_event("order.placed"), on_failure=record)
    async def parent(ctx: stepwise.Context) -> Any:
        doubled = await ctx.step.invoke("double", function=child, data={"n": 21})
        if ctx.event.data.get("fail"):
            await ctx.step.run("charge", boom)
        return doubled

    @app.function(id="greet", trigger=stepwise.on_event("user.signup"))
    async def greet(ctx: stepwise.Context) -> Any:
        return ctx.event.data["user"]["name"]

    return app


async def test_events_are_listed_newest_first_with_paging_and_filters(db: str) -> None:
    async with Harness(make_app(), db) as h:
        ids = []
        for n in range(3):
            ids.append(await h.send("user.signup", {"user": {"id": n, "name": f"u{n}"}}))
            h.clock.advance(1)
        other = await h.send("order.placed", {"order": 7})
        # The worker runs in the background: let the parent's invoke event exist before
        # listing. It was received at the same instant as `other`, and ties go by id.
        await h.settle(advance=False)
        run = await h.run_for(other, "parent")
        invoked = f"invoke:{run['id']}:double"
        listing = (await h.http.get("/api/v1/events")).json()
        assert [e["id"] for e in listing["events"]] == [invoked, other, *reversed(ids)]
        assert listing["events"][1]["data"] == {"order": 7} and listing["next"] is None
        first = (await h.http.get("/api/v1/events", params={"name": "user.signup",
                                                               "limit": 2})).json()
        assert [e["id"] for e in first["events"]] == [ids[2], ids[1]]
        rest = (await h.http.get("/api/v1/events", params={
            "name": "user.signup", "limit": 2, "before": first["next"]})).json()
        assert [e["id"] for e in rest["events"]] == [ids[0]] and rest["next"] is None
        detail = (await h.http.get(f"/api/v1/events/{ids[1]}")).json()
        assert detail["data"] == {"user": {"id": 1, "name": "u1"}}
        assert [(r["function_id"], r["status"]) for r in detail["runs"]] == [
            ("greet", "completed")]
        missing = await h.http.get("/api/v1/events/nope")
        assert missing.status_code == 404 and "not found" in missing.json()["error"]


async def test_runs_are_searchable_by_event_name_data_and_time(db: str) -> None:
    async with Harness(make_app(), db) as h:
        early = await h.send("user.signup", {"user": {"id": 1, "name": "ada"}})
        h.clock.advance(3600)
        late = await h.send("user.signup", {"user": {"id": 2, "name": "bob"}})
        await h.send("order.placed", {"order": 1})
        await h.settle()

        async def search(**params: Any) -> list[str]:
            response = await h.http.get("/api/v1/runs", params=params)
            assert response.status_code == 200, response.text
            return [r["event_id"] for r in response.json()["runs"]]

        assert await search(event_name="user.signup") == [late, early]
        assert await search(event_data="user.id=2") == [late]
        assert await search(event_data="user.name=ada") == [early]
        assert await search(event_data="user.name=nobody") == []
        cut = h.clock.now() - 1800
        from datetime import UTC, datetime
        moment = datetime.fromtimestamp(cut, UTC).isoformat()
        assert await search(event_name="user.signup", since=moment) == [late]
        assert await search(function="greet", until=moment) == [early]
        bad = await h.http.get("/api/v1/runs", params={"event_data": "no equals sign"})
        assert bad.status_code == 400 and "event_data" in bad.json()["error"]


async def test_a_run_shows_its_event_and_the_runs_it_started(db: str) -> None:
    async with Harness(make_app(), db) as h:
        ok = await h.send("order.placed", {"order": 1})
        failing = await h.send("order.placed", {"order": 2, "fail": True})
        await h.settle()
        run = await h.run_for(ok, "parent")
        assert run["output"] == {"doubled": 42}
        assert run["event"]["data"] == {"order": 1} and run["event"]["name"] == "order.placed"
        [invoked] = run["children"]
        assert invoked["function_id"] == "child" and invoked["parent_run_id"] == run["id"]
        assert invoked["status"] == "completed"
        failed = await h.run_for(failing, "parent")
        assert failed["status"] == "failed"
        relations = {c["function_id"]: c for c in failed["children"]}
        assert set(relations) == {"child", "parent-failure"}
        handler = relations["parent-failure"]
        assert handler["origin_run_id"] == failed["id"]
        shown = (await h.http.get(handler["url"])).json()
        assert shown["origin_run_id"] == failed["id"] and shown["status"] == "completed"


async def test_logger_lines_are_stored_once_with_their_step(db: str) -> None:
    app = stepwise.App("logs")
    attempts: list[int] = []

    @app.function(id="chatty", trigger=stepwise.on_event("talk"), retries=1)
    async def chatty(ctx: stepwise.Context) -> str:
        ctx.logger.info("starting for %s", ctx.event.data["who"])

        async def flaky() -> str:
            attempts.append(1)
            ctx.logger.warning("attempt %d", len(attempts))
            if len(attempts) == 1:
                raise RuntimeError("first try fails")
            return "ok"

        result = await ctx.step.run("flaky", flaky)
        ctx.logger.info("done: %s", result)
        return result

    @app.function(id="flood", trigger=stepwise.on_event("flood"))
    def flood(ctx: stepwise.Context) -> None:
        for i in range(1100):
            ctx.logger.info("line %d", i)

    async with Harness(app, db) as h:
        talk = await h.send("talk", {"who": "ada"})
        flooded = await h.send("flood")
        await h.settle()
        run = await h.run_for(talk, "chatty")
        assert run["status"] == "completed"
        # The body ran twice (the retry replays it), yet "starting" is kept once.
        assert [(line["level"], line["step_id"], line["message"]) for line in run["logs"]] == [
            ("INFO", None, "starting for ada"), ("WARNING", "flaky", "attempt 1"),
            ("WARNING", "flaky", "attempt 2"), ("INFO", None, "done: ok")]
        logs = (await h.run_for(flooded, "flood"))["logs"]
        assert len(logs) == 1001 and logs[999]["message"] == "line 999"
        assert "log capped at 1000 lines" in logs[1000]["message"]


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    import re

    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if got == wanted:
                return float(match.group(3))
    return 0.0


async def test_metrics_after_a_known_sequence_of_runs(db: str) -> None:
    import uuid
    from datetime import timedelta

    fid = f"m-{uuid.uuid4().hex[:8]}"
    app = stepwise.App("metrics")

    def fail() -> None:
        raise RuntimeError("nope")

    @app.function(id=fid, trigger=stepwise.on_event(fid), retries=1)
    async def f(ctx: stepwise.Context) -> str:
        kind = ctx.event.data["kind"]
        if kind == "fail":
            await ctx.step.run("bad", fail)
        if kind == "sleep":
            await ctx.step.sleep("nap", timedelta(days=1))
        await ctx.step.run("ok", lambda: 1)
        return kind

    async with Harness(app, db) as h:
        for kind in ("ok", "ok", "fail", "sleep", "cancel"):
            await h.send(fid, {"kind": kind})
        await h.settle(max_advance=3600)  # the retry happens, the one-day sleep does not end
        runs = {r["output"] or r["status"]: r for r in await h.runs()}
        assert runs["ok"]["status"] == "completed"
        waiting = [r for r in await h.runs() if r["status"] == "sleeping"]
        assert len(waiting) == 1
        before = (await h.http.get("/metrics")).text
        assert _metric(before, "stepwise_unfinished_runs", function=fid, status="sleeping") == 1
        cancelled = await h.http.post(f"/api/v1/runs/{waiting[0]['id']}/cancel")
        assert cancelled.status_code == 200
        text = (await h.http.get("/metrics")).text

    def value(name: str, **labels: str) -> float:
        return _metric(text, name, function=fid, **labels)

    # "cancel" is an ordinary run that completed; the sleeping one is the one cancelled.
    assert value("stepwise_runs_finished_total", status="completed") == 3
    assert value("stepwise_runs_finished_total", status="failed") == 1
    assert value("stepwise_runs_finished_total", status="cancelled") == 1
    assert value("stepwise_steps_finished_total", status="retrying") == 1  # "bad", once
    assert value("stepwise_steps_finished_total", status="failed") == 1
    # "ok" ran in the three completed runs; the failing and sleeping runs never reached it.
    assert value("stepwise_steps_finished_total", status="completed") == 3
    assert value("stepwise_step_duration_seconds_count") == 5
    assert value("stepwise_run_duration_seconds_count", status="completed") == 3
    assert value("stepwise_run_duration_seconds_count", status="failed") == 1
    assert _metric(text, "stepwise_events_received_total") >= 5
    assert _metric(text, "stepwise_queue_depth") == 0
    assert value("stepwise_unfinished_runs", status="sleeping") == 0
    assert "# HELP stepwise_lease_takeovers_total" in text
    assert "# HELP stepwise_oldest_due_run_age_seconds" in text
