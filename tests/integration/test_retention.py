"""Retention, `POST /api/v1/prune` and erasure, on both backends: exactly the finished runs past
their window go, with everything stored about them; nothing that is unfinished, held by an
idempotency window or by a kept run; erasure leaves no row holding the subject's data."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import stepwise
from stepwise.engine.retention import START, plan, uniform
from stepwise.pruner import Pruner
from stepwise.storage import Tx
from stepwise.testing import Harness

DAY = 86400.0


def make_app() -> stepwise.App:
    app = stepwise.App("keep")

    @app.function(id="quick", trigger=stepwise.on_event("quick"))
    async def quick(ctx: stepwise.Context) -> Any:
        ctx.logger.info("quick ran")
        return await ctx.step.run("one", lambda: {"n": ctx.event.data.get("n")})

    @app.function(id="broken", trigger=stepwise.on_event("broken"), retries=0)
    async def broken(ctx: stepwise.Context) -> Any:
        await ctx.step.run("ok", lambda: 1)
        raise stepwise.NonRetriableError("card declined")

    @app.function(id="keepy", trigger=stepwise.on_event("keepy"),
                  retention=stepwise.Retention(completed=timedelta(days=400)))
    async def keepy(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("one", lambda: "kept")

    @app.function(id="sleeper", trigger=stepwise.on_event("sleeper"))
    async def sleeper(ctx: stepwise.Context) -> Any:
        await ctx.step.run("before", lambda: 1)
        await ctx.step.sleep("nap", timedelta(days=400))

    @app.function(id="waiter", trigger=stepwise.on_event("waiter"))
    async def waiter(ctx: stepwise.Context) -> Any:
        await ctx.step.wait_for_event("wait", event="never.sent", timeout=timedelta(days=400))

    @app.function(id="retrier", trigger=stepwise.on_event("retrier"))
    async def retrier(ctx: stepwise.Context) -> Any:
        def later() -> None:
            raise stepwise.RetryAfterError("not yet", timedelta(days=400))
        await ctx.step.run("later", later)

    @app.function(id="debounced", trigger=stepwise.on_event("debounced"),
                  debounce=stepwise.Debounce(timedelta(days=400)))
    async def debounced(ctx: stepwise.Context) -> Any:
        return "late"

    @app.function(id="idem", trigger=stepwise.on_event("idem"), idempotency="event.data.key")
    async def idem(ctx: stepwise.Context) -> Any:
        return "once"

    return app


async def _rows_of(h: Harness, run_ids: list[str]) -> dict[str, int]:
    """How many rows of each per-run table still name one of `run_ids`."""
    def count(tx: Tx) -> dict[str, int]:
        out = {}
        for table, column in (("runs", "id"), ("steps", "run_id"), ("failures", "run_id"),
                              ("run_logs", "run_id"), ("run_events", "run_id"),
                              ("queue", "run_id"), ("waits", "run_id"),
                              ("idempotency", "run_id")):
            rows = tx.raw_all(f"SELECT {column} AS id FROM {table}", {})
            out[table] = sum(1 for r in rows if r["id"] in run_ids)
        return out
    return await h.storage.read(count)


async def _status(h: Harness, run_id: str) -> str | None:
    response = await h.http.get(f"/api/v1/runs/{run_id}")
    return None if response.status_code == 404 else str(response.json()["status"])


async def test_retention_deletes_exactly_the_finished_runs_past_their_window(db: str) -> None:
    async with Harness(make_app(), db) as h:
        old = {name: await h.send(name, {"n": 1}) for name in (
            "quick", "broken", "keepy", "sleeper", "waiter", "retrier")}
        old_quick_2 = await h.send("quick", {"n": 2})
        lonely = await h.send("nobody.listens", {"n": 3})  # starts no run
        await h.settle(advance=False)
        runs = {name: (await h.runs(event_id=ev))[0]["id"] for name, ev in old.items()}
        runs["quick2"] = (await h.runs(event_id=old_quick_2))[0]["id"]
        assert {n: (await h.run(r))["status"] for n, r in runs.items()} == {
            "quick": "completed", "quick2": "completed", "broken": "failed",
            "keepy": "completed", "sleeper": "sleeping", "waiter": "waiting",
            "retrier": "queued"}

        h.clock.advance(31 * DAY)
        fresh = await h.send("quick", {"n": 4})
        pending = await h.send("debounced", {})
        await h.settle(advance=False)
        fresh_run = (await h.runs(event_id=fresh))[0]["id"]
        debounced_run = (await h.runs(event_id=pending))[0]["id"]

        pruner = Pruner(h.engine, batch=1, page=2)  # many small batches and pages
        result = await pruner.pass_once()
        assert result is not None
        assert (result.deleted.runs, result.deleted.steps, result.deleted.events) == (2, 2, 3)
        gone = [runs["quick"], runs["quick2"]]
        assert [await _status(h, r) for r in gone] == [None, None]
        assert await _rows_of(h, gone) == dict.fromkeys(
            ("runs", "steps", "failures", "run_logs", "run_events", "queue", "waits",
             "idempotency"), 0)
        for event_id in (old["quick"], old_quick_2, lonely):
            assert (await h.http.get(f"/api/v1/events/{event_id}")).status_code == 404
        kept = {n: r for n, r in runs.items() if n not in ("quick", "quick2")}
        assert {n: await _status(h, r) for n, r in kept.items()} == {
            "broken": "failed", "keepy": "completed", "sleeper": "sleeping",
            "waiter": "waiting", "retrier": "queued"}
        assert await _status(h, fresh_run) == "completed"
        assert await _status(h, debounced_run) == "queued"
        for name in ("broken", "keepy", "sleeper", "waiter", "retrier"):
            assert (await h.http.get(f"/api/v1/events/{old[name]}")).status_code == 200

        h.clock.advance(60 * DAY)  # 91 days: past the failed runs' window too
        result = await pruner.pass_once()
        assert result is not None and result.deleted.runs == 2  # broken, fresh quick
        assert await _status(h, runs["broken"]) is None
        assert await _status(h, fresh_run) is None
        assert {n: await _status(h, r) for n, r in kept.items() if n != "broken"} == {
            "keepy": "completed", "sleeper": "sleeping", "waiter": "waiting",
            "retrier": "queued"}
        assert await _status(h, debounced_run) == "queued"
        detail = await h.run(runs["sleeper"])
        assert [s["name"] for s in detail["steps"]] == ["before", "nap"]

        again = await pruner.pass_once()
        assert again is not None and again.deleted.runs == 0


async def test_retention_setting_is_stored_and_read_back(db: str) -> None:
    async with Harness(make_app(), db) as h:
        shown = (await h.http.get("/api/v1/retention")).json()
        assert shown["completed"] == "30d" and shown["failed"] == "90d"
        assert shown["functions"] == [{"app_id": "keep", "function_id": "keepy",
                                       "completed": "400d", "failed": "90d"}]
        changed = await h.http.put("/api/v1/retention", json={"completed": "7d",
                                                               "failed": "forever"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["completed"] == "1w" and changed.json()["failed"] == "forever"
        assert (await h.http.get("/api/v1/retention")).json()["functions"][0]["failed"] == \
            "forever"
        for bad in ({"completed": "7 days"}, {"failed": "0s"}, {"completed": 7},
                    {"other": "1d"}):
            response = await h.http.put("/api/v1/retention", json=bad)
            assert response.status_code == 400, (bad, response.text)
        assert (await h.http.get("/api/v1/retention")).json()["completed"] == "1w"

        await h.send("quick", {})
        await h.send("broken", {})
        await h.settle(advance=False)
        h.clock.advance(8 * DAY)
        result = await Pruner(h.engine).pass_once()
        assert result is not None and result.deleted.runs == 1  # failed runs: forever
        assert [r["status"] for r in await h.runs()] == ["failed"]


async def test_prune_api_counts_then_deletes_and_keeps_idempotent_runs(db: str) -> None:
    async with Harness(make_app(), db) as h:
        for n in range(3):
            await h.send("quick", {"n": n})
        keyed = await h.send("idem", {"key": "k1"})
        await h.send("sleeper", {})
        await h.settle(advance=False)
        h.clock.advance(2 * 3600)

        dry = await h.http.post("/api/v1/prune", json={"older_than": "1h", "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json()["by_status"] == {"completed": 3}
        assert (dry.json()["runs"], dry.json()["steps"], dry.json()["events"]) == (3, 3, 3)
        assert len(await h.runs()) == 5  # a dry run deletes nothing

        done = (await h.http.post("/api/v1/prune", json={"older_than": "1h"})).json()
        assert (done["runs"], done["steps"], done["events"], done["more"]) == (3, 3, 3, False)
        left = {r["function_id"] for r in await h.runs()}
        assert left == {"idem", "sleeper"}  # its idempotency key holds for 24 h

        h.clock.advance(25 * 3600)
        done = (await h.http.post("/api/v1/prune", json={"older_than": "1h"})).json()
        assert (done["runs"], done["events"]) == (1, 1)  # its key went with it
        assert await h.storage.read(lambda tx: tx.raw_all("SELECT key FROM idempotency", {})) \
            == []
        assert (await h.http.get(f"/api/v1/events/{keyed}")).status_code == 404
        assert [r["function_id"] for r in await h.runs()] == ["sleeper"]

        for bad in ({"older_than": "yesterday"}, {"older_than": "1h", "dry_run": "yes"},
                    {"older_than": "1h", "max_runs": 0}, {}, {"older_than": "-1d"}):
            response = await h.http.post("/api/v1/prune", json=bad)
            assert response.status_code == 400, (bad, response.text)
            assert "error" in response.json()


async def test_prune_stops_at_max_runs_and_goes_on(db: str) -> None:
    async with Harness(make_app(), db) as h:
        for n in range(5):
            await h.send("quick", {"n": n})
        await h.settle(advance=False)
        h.clock.advance(3600)
        pruner = Pruner(h.engine, page=2, batch=2)
        first = await pruner.prune(uniform(1000), max_runs=2)
        assert (first.deleted.runs, first.more) == (2, True)
        rest = await pruner.prune(uniform(1000))
        assert (rest.deleted.runs, rest.more) == (3, False)
        assert await h.runs() == []


async def test_a_run_replayed_while_a_batch_is_chosen_is_kept(db: str) -> None:
    async with Harness(make_app(), db) as h:
        await h.send("broken", {})
        await h.send("quick", {})
        await h.settle(advance=False)
        h.clock.advance(100 * DAY)
        page = await h.engine.prunable_runs(await h.storage.read(plan), START, 100)
        assert len(page.ids) == 2
        failed = next(r["id"] for r in await h.runs() if r["status"] == "failed")
        replayed = await h.http.post(f"/api/v1/runs/{failed}/replay")
        assert replayed.status_code == 200, replayed.text
        deleted = await h.engine.delete_runs(page.ids, page.ended_by)
        assert deleted.runs == 1  # the completed one; the replayed run is queued again
        await h.settle(advance=False)
        run = await h.run(failed)
        assert run["status"] == "failed" and run["attempts"] == 2
        assert [s["name"] for s in run["steps"]] == ["ok"]
