"""What operators do from the dashboard, through the API: bulk replay and cancel by filter
(with a dry-run count), re-running a finished run, the workers view and its warning about
runs nobody serves, per-function counts and durations, and the runs-started counter."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stepwise
from stepwise import metrics
from stepwise.definition import EventTrigger, FunctionDefinition
from stepwise.testing import Harness

BROKEN = {"charge": True}


def make_app() -> stepwise.App:
    app = stepwise.App("ops")

    def charge(order: int) -> dict[str, Any]:
        if BROKEN["charge"]:
            raise stepwise.NonRetriableError(f"card declined for order {order}")
        return {"charged": order}

    @app.function(id="checkout", trigger=stepwise.on_event("order.placed"), retries=0,
                  idempotency="event.data.order")
    async def checkout(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("charge", charge, ctx.event.data["order"])

    @app.function(id="slow", trigger=stepwise.on_event("job.slow"))
    async def slow(ctx: stepwise.Context) -> Any:
        await ctx.step.sleep("wait", timedelta(hours=1))
        return "done"

    return app


def _started(function_id: str) -> float:
    value = metrics.REGISTRY.get_sample_value("stepwise_runs_started_total",
                                              {"function": function_id})
    return value or 0.0


async def test_bulk_replay_counts_first_then_replays_only_the_filtered_failed_runs(
        db: str) -> None:
    BROKEN["charge"] = True
    started_before = _started("checkout")
    async with Harness(make_app(), db) as h:
        batch = [await h.send("order.placed", {"order": n, "batch": "b1"}) for n in range(3)]
        other = await h.send("order.placed", {"order": 99, "batch": "b2"})
        await h.settle()
        failed = await h.runs(function="checkout", status="failed")
        assert len(failed) == 4
        assert _started("checkout") - started_before == 4
        body = {"function": "checkout", "event_data": "batch=b1"}
        dry = await h.http.post("/api/v1/runs/replay", json={**body, "dry_run": True})
        assert dry.status_code == 200 and dry.json() == {"matched": 3, "changed": 0,
                                                          "more": False}
        assert len(await h.runs(function="checkout", status="failed")) == 4  # nothing moved
        BROKEN["charge"] = False
        done = await h.http.post("/api/v1/runs/replay", json=body)
        assert done.json() == {"matched": 3, "changed": 3, "more": False}
        await h.settle()
        for event_id in batch:
            run = await h.run_for(event_id, "checkout")
            assert run["status"] == "completed" and run["attempts"] == 2
        assert (await h.run_for(other, "checkout"))["status"] == "failed"
        # A replay is not a new start.
        assert _started("checkout") - started_before == 4
        again = await h.http.post("/api/v1/runs/replay", json=body)
        assert again.json() == {"matched": 0, "changed": 0, "more": False}


async def test_bulk_cancel_touches_only_unfinished_runs_and_rejects_bad_filters(
        db: str) -> None:
    BROKEN["charge"] = True
    async with Harness(make_app(), db) as h:
        sleepers = [await h.send("job.slow", {"n": n}) for n in range(2)]
        await h.send("order.placed", {"order": 1})
        await h.settle(advance=False)
        dry = (await h.http.post("/api/v1/runs/cancel", json={"dry_run": True})).json()
        assert dry["matched"] == 2  # the sleeping ones; the failed checkout is finished
        assert (await h.http.post("/api/v1/runs/cancel",
                                  json={"status": "failed"})).json()["matched"] == 0
        result = (await h.http.post("/api/v1/runs/cancel", json={"function": "slow"})).json()
        assert result == {"matched": 2, "changed": 2, "more": False}
        for event_id in sleepers:
            assert (await h.run_for(event_id, "slow"))["status"] == "cancelled"
        for bad, word in (({"status": "nope"}, "status"), ({"since": "yesterday"}, "since"),
                          ({"event_data": "no equals"}, "event_data"),
                          ({"unknown": 1}, "unknown")):
            answer = await h.http.post("/api/v1/runs/cancel", json=bad)
            assert answer.status_code == 400 and word in answer.json()["error"], (bad, answer)


async def test_rerun_starts_a_new_run_with_the_same_event_despite_idempotency(db: str) -> None:
    BROKEN["charge"] = False
    async with Harness(make_app(), db) as h:
        event_id = await h.send("order.placed", {"order": 5})
        await h.settle()
        first = await h.run_for(event_id, "checkout")
        assert first["status"] == "completed"
        answer = await h.http.post(f"/api/v1/runs/{first['id']}/rerun")
        assert answer.status_code == 200
        second = answer.json()
        assert second["id"] != first["id"] and second["rerun_of"] == first["id"]
        assert second["event_id"] == event_id
        await h.settle()
        assert (await h.run(second["id"]))["output"] == {"charged": 5}
        original = await h.run(first["id"])
        assert [c["id"] for c in original["children"]] == [second["id"]]
        sleeping = await h.send("job.slow", {})
        await h.settle(advance=False)
        running = await h.run_for(sleeping, "slow")
        conflict = await h.http.post(f"/api/v1/runs/{running['id']}/rerun")
        assert conflict.status_code == 409 and "still" in conflict.json()["error"]
        missing = await h.http.post("/api/v1/runs/nope/rerun")
        assert missing.status_code == 404


async def test_wake_ends_a_sleep_now_and_only_for_a_sleeping_run(db: str) -> None:
    async with Harness(make_app(), db) as h:
        event_id = await h.send("job.slow", {})
        await h.settle(advance=False)
        run = await h.run_for(event_id, "slow")
        assert run["status"] == "sleeping"
        woken = await h.http.post(f"/api/v1/runs/{run['id']}/wake")
        assert woken.status_code == 200 and woken.json()["status"] == "queued"
        await h.settle(advance=False)  # no time passes: the hour-long sleep was ended
        done = await h.run(run["id"])
        assert done["status"] == "completed" and done["output"] == "done"
        assert [s["status"] for s in done["steps"]] == ["completed"]
        again = await h.http.post(f"/api/v1/runs/{run['id']}/wake")
        assert again.status_code == 409 and "no sleep, wait or retry" in again.json()["error"]
        assert (await h.http.post("/api/v1/runs/nope/wake")).status_code == 404


async def test_workers_view_lists_live_workers_and_warns_of_unserved_runs(db: str) -> None:
    async with Harness(make_app(), db) as h:
        view = (await h.http.get("/api/v1/workers")).json()
        assert len(view["workers"]) == 1
        worker = view["workers"][0]
        assert worker["live"] and worker["app_id"] == "ops" and worker["slots"] >= 1
        assert sorted(worker["functions"]) == ["checkout", "slow"]
        assert view["unserved"] == []
        # A function stored for this app that no live worker serves any more (as after a
        # deploy that removed it) with a queued run: the view warns about it.
        gone = FunctionDefinition(id="retired", app_id="ops",
                                  triggers=(EventTrigger("legacy.event"),))
        await h.engine.register("ops", [*(f.definition() for f in
                                          make_app().functions.values()), gone])
        await h.send("legacy.event", {})
        view = (await h.http.get("/api/v1/workers")).json()
        assert [(u["function_id"], u["queued"]) for u in view["unserved"]] == [("retired", 1)]


async def test_function_stats_count_runs_and_durations_per_bucket(db: str) -> None:
    BROKEN["charge"] = False
    async with Harness(make_app(), db) as h:
        for n in range(3):
            await h.send("order.placed", {"order": n})
        await h.settle()
        BROKEN["charge"] = True
        await h.send("order.placed", {"order": 10})
        await h.settle()
        stats = (await h.http.get("/api/v1/stats/functions",
                                  params={"hours": 1, "buckets": 6})).json()
        checkout = stats["functions"]["checkout"]
        assert sum(checkout["completed"]) == 3 and sum(checkout["failed"]) == 1
        assert len(checkout["completed"]) == 6 and stats["bucket_ms"] == 600_000
        assert checkout["completed"][-1] == 3  # all in the newest bucket
        assert checkout["p50_ms"][-1] is not None and checkout["p95_ms"][-1] is not None
        assert checkout["p50_ms"][0] is None
        bad = await h.http.get("/api/v1/stats/functions", params={"hours": 0})
        assert bad.status_code == 400


async def test_an_event_with_a_nul_in_its_data_never_breaks_searching_by_event_data(
        db: str) -> None:
    """PostgreSQL's jsonb cannot hold U+0000, which JSON text may: one such event (sent through
    the API) once made every `event_data` search and bulk action answer 500, for everyone."""
    BROKEN["charge"] = True
    async with Harness(make_app(), db) as h:
        for data in ({"order": 1, "batch": "b1", "note": "a\u0000b"},
                     {"order": 2, "batch": "b1", "note": "a\\u0000 is text"},
                     {"order": 3, "batch": "b2", "note": "\\\u0000\u0000"}):
            sent = await h.http.post("/api/v1/events", json={"name": "order.placed",
                                                             "data": data})
            assert sent.status_code == 200, sent.text
        await h.settle()
        found = await h.http.get("/api/v1/runs", params={"event_data": "batch=b1"})
        assert found.status_code == 200, found.text
        assert len(found.json()["runs"]) == 2
        text = await h.http.get("/api/v1/runs", params={"event_data": "note=a\\u0000 is text"})
        assert text.status_code == 200 and len(text.json()["runs"]) == 1  # not a NUL: as is
        dry = await h.http.post("/api/v1/runs/replay", json={"event_data": "batch=b2",
                                                             "dry_run": True})
        assert dry.status_code == 200 and dry.json()["matched"] == 1
        stored = await h.http.get("/api/v1/events", params={"name": "order.placed"})
        notes = sorted(loads_note(e) for e in stored.json()["events"])
        assert notes == sorted(["a\u0000b", "a\\u0000 is text", "\\\u0000\u0000"])  # kept as sent


def loads_note(event: dict[str, Any]) -> str:
    return str(event["data"]["note"])


async def test_bulk_dry_run_must_be_a_boolean(db: str) -> None:
    """Found by the fuzz test: `{"dry_run": 0}` was read as false and replayed for real."""
    app = stepwise.App("strict")
    async with Harness(app, db) as h:
        for wrong in (0, 1, "yes", "true", None):
            response = await h.http.post("/api/v1/runs/replay", json={"dry_run": wrong})
            assert response.status_code == 400, (wrong, response.text)
            assert "dry_run" in response.json()["error"]
        assert (await h.http.post("/api/v1/runs/replay", json={"dry_run": True})).status_code \
            == 200


async def test_a_browser_gets_the_dashboards_not_found_page_and_programs_json(db: str) -> None:
    """An unknown page address answers the dashboard's shell with 404 to a browser (its
    script shows "Page not found"); the API's paths, other clients and other methods keep
    the JSON 404, and a known page's wrong method its 405."""
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    async with Harness(make_app(), db) as h:
        for path in ("/no/such/page", "/runs/some-run/extra", "/functions/checkout"):
            page = await h.http.get(path, headers=browser)
            assert page.status_code == 404, path
            assert page.headers["content-type"].startswith("text/html")
            assert '<main id="page">' in page.text and "/assets/app.js" in page.text
        assert (await h.http.get("/runs", headers=browser)).status_code == 200
        for path, headers in (("/api/v1/nope", browser), ("/api", browser),
                              ("/no/such/page", {"Accept": "*/*"}),
                              ("/no/such/page", {"Accept": "application/json"})):
            answer = await h.http.get(path, headers=headers)
            assert answer.status_code == 404, path
            assert answer.json() == {"error": "Not Found"}, (path, headers)
        posted = await h.http.post("/no/such/page", headers=browser, json={})
        assert posted.status_code == 404 and posted.json() == {"error": "Not Found"}
        wrong = await h.http.post("/runs", headers=browser, json={})
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
