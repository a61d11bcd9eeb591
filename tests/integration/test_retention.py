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
        assert (await h.http.get("/healthz")).json()["runs"] == {
            "queued": 2, "sleeping": 1, "waiting": 1}
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


SUBJECT = "erase-me@example.com"
OTHER = "keep-me@example.com"


def erasure_app() -> stepwise.App:
    app = stepwise.App("gdpr")

    @app.function(id="mailer", trigger=stepwise.on_event("mail.requested"))
    async def mailer(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("send", lambda: {"sent_to": ctx.event.data["email"]})

    @app.function(id="signup", trigger=stepwise.on_event("user.signup"),
                  rate_limit=stepwise.RateLimit(10, timedelta(days=1), key="event.data.email"),
                  throttle=stepwise.Throttle(10, timedelta(hours=1), key="event.data.email"),
                  idempotency="event.data.email")
    async def signup(ctx: stepwise.Context) -> Any:
        email = ctx.event.data["email"]
        ctx.logger.info(f"welcoming {email}")
        sent = await ctx.step.invoke("mail", function=mailer, data={"email": email})
        return {"welcomed": email, "mail": sent}

    @app.function(id="upgrade", trigger=stepwise.on_event("user.upgrade"), retries=1)
    async def upgrade(ctx: stepwise.Context) -> Any:
        await ctx.step.run("charge", _decline, ctx.event.data["email"])

    @app.function(id="waits", trigger=stepwise.on_event("user.signup"),
                  concurrency=stepwise.Concurrency(5, key="event.data.email"))
    async def waits(ctx: stepwise.Context) -> Any:
        await ctx.step.wait_for_event("confirm", event="user.confirmed", match="data.email",
                                      timeout=timedelta(days=30))

    return app


def _decline(email: str) -> None:
    raise RuntimeError(f"card of {email} declined")


async def _rows_holding(h: Harness, text: str) -> list[str]:
    """Every row of every table in which `text` appears, as `table: row`."""
    def scan(tx: Tx) -> list[str]:
        if h.storage.dialect == "postgres":
            tables = [r["t"] for r in tx.raw_all(
                "SELECT table_name AS t FROM information_schema.tables "
                "WHERE table_schema = current_schema()", {})]
        else:
            tables = [r["t"] for r in tx.raw_all(
                "SELECT name AS t FROM sqlite_master WHERE type = 'table'", {})]
        assert {"events", "runs", "steps", "flow_state", "idempotency"} <= set(tables)
        return [f"{table}: {row}" for table in tables
                for row in tx.raw_all(f"SELECT * FROM {table}", {}) if text in str(row)]
    return await h.storage.read(scan)


async def test_erasure_leaves_no_row_holding_the_subjects_data(db: str) -> None:
    async with Harness(erasure_app(), db) as h:
        first = await h.send("user.signup", {"email": SUBJECT, "user": {"id": 42}})
        await h.send("user.upgrade", {"email": SUBJECT, "user": {"id": 42}})
        await h.send("user.signup", {"email": SUBJECT, "user": {"id": 42}})  # idempotent
        await h.send("user.signup", {"email": OTHER, "user": {"id": 7}})
        await h.settle(max_advance=3600)  # the upgrade's retry, not the waits' timeout
        signup = await h.run_for(first, "signup")
        assert signup["status"] == "completed" and signup["output"]["welcomed"] == SUBJECT
        replayed = await h.http.post(f"/api/v1/runs/{signup['id']}/rerun")
        assert replayed.status_code == 200, replayed.text
        await h.settle(advance=False)
        assert await _rows_holding(h, SUBJECT), "the test must start with the data stored"
        others = {r["id"]: r["status"] for r in await h.runs()
                  if r["id"] not in {x["id"] for x in await _subject_runs(h)}}

        failures = (await h.run((await h.runs(function="upgrade"))[0]["id"]))["failures"]
        assert len(failures) == 2 and SUBJECT in str(failures)

        dry = await h.http.post("/api/v1/erase", json={"event_data": "user.id=42",
                                                       "dry_run": True})
        assert dry.status_code == 200, dry.text
        # Events: 3 signups/upgrades. Runs: signup, its re-run, the mailer run each invoked,
        # upgrade, and the two waits runs (one per signup event; unfinished).
        assert {k: dry.json()[k] for k in ("events", "runs", "unfinished", "more")} == {
            "events": 3, "runs": 7, "unfinished": 2, "more": False}
        refused = await h.http.post("/api/v1/erase", json={"event_data": "user.id=42"})
        assert refused.status_code == 409 and "cancel" in refused.json()["error"]
        assert await _rows_holding(h, SUBJECT), "a refused erasure deletes nothing"

        done = await h.http.post("/api/v1/erase", json={"event_data": "user.id=42",
                                                        "cancel_unfinished": True})
        assert done.status_code == 200, done.text
        assert done.json()["deleted"]["runs"] == 7 and not done.json()["more"]
        assert done.json()["deleted"]["events"] == 5  # and the 2 invoke events
        assert await _rows_holding(h, SUBJECT) == []
        assert {r["id"]: r["status"] for r in await h.runs()} == others
        assert others and await _rows_holding(h, OTHER)

        for bad in ({"event_data": "no-equals"}, {"event_data": "user.id=1", "dry_run": 1},
                    {"event_data": "user.id=1", "cancel": True}, {}):
            response = await h.http.post("/api/v1/erase", json=bad)
            assert response.status_code == 400, (bad, response.text)


async def _subject_runs(h: Harness) -> list[dict[str, Any]]:
    return [r for r in await h.runs() if SUBJECT in str(await h.run(r["id"]))]


def windows_app() -> stepwise.App:
    app = stepwise.App("windows")

    @app.function(id="signup", trigger=stepwise.on_event("user.signup"),
                  rate_limit=stepwise.RateLimit(2, timedelta(hours=1), key="event.data.user"),
                  throttle=stepwise.Throttle(6, timedelta(hours=6), key="event.data.user"))
    async def signup(ctx: stepwise.Context) -> Any:
        return ctx.event.data["user"]

    return app


async def flow_keys(h: Harness) -> dict[str, int | None]:
    rows = await h.storage.read(lambda tx: tx.raw_all(
        "SELECT key, expires_at FROM flow_state", {}))
    return {r["key"]: r["expires_at"] for r in rows}


async def test_rate_limit_and_throttle_windows_go_once_they_stop_mattering(db: str) -> None:
    """A window per key value (per user here) is kept while it can still limit a run and
    deleted after: a rate window one period after its last start, a throttle once its next
    start time passed. Windows stored before they had an expiry get one from their function's
    period, or go at once when their function is gone."""
    async with Harness(windows_app(), db) as h:
        start = h.clock.now_ms()
        for user in ("ann", "bob", "ann"):
            await h.send("user.signup", {"user": user})
        await h.settle(advance=False)
        keys = await flow_keys(h)
        assert len(keys) == 4 and all(at is not None for at in keys.values())
        rate = {k: at for k, at in keys.items() if k.startswith("rate:")}
        assert sorted(rate.values()) == [start + 3_600_000] * 2
        # Legacy windows: a rate window of this function (its last start 10 min ago), a
        # throttle's next start in 2 h, and a window of a function that is gone.
        legacy = {"rate:windows:signup:\"old\"": (f"[{start - 600_000}]", start + 3_000_000),
                  "throttle:windows:signup:\"old\"": (f'{{"tat": {start + 7_200_000}}}',
                                                       start + 7_200_000),
                  "rate:windows:removed:\"x\"": (f"[{start}]", start)}
        for key, (state, _) in legacy.items():
            await h.storage.write(lambda tx, k=key, s=state: tx.raw_all(
                "INSERT INTO flow_state (key, state) VALUES (:k, :s) RETURNING key",
                {"k": k, "s": s}))

        await Pruner(h.engine).pass_once()  # now: only the gone function's window goes
        after = await flow_keys(h)
        assert set(after) == set(keys) | set(legacy) - {"rate:windows:removed:\"x\""}
        assert {k: after[k] for k in legacy if k in after} == {
            k: at for k, (_, at) in legacy.items() if k in after}
        # Within the hour the rate windows still limit: ann's third signup is skipped.
        await h.send("user.signup", {"user": "ann"})
        await h.settle(advance=False)
        assert [r["status"] for r in await h.runs()].count("skipped") == 1

        # An hour on: the rate windows' hour passed, and bob's throttle (one start an hour)
        # is free again; ann's (two starts: the next at 2 h) and the legacy one (2 h) are not.
        h.clock.advance(3601)
        result = await Pruner(h.engine).pass_once()
        assert result is not None and result.flow_windows == 4
        assert sorted(await flow_keys(h)) == ['throttle:windows:signup:"ann"',
                                             'throttle:windows:signup:"old"']
        h.clock.advance(3600)
        result = await Pruner(h.engine).pass_once()
        assert result is not None and result.flow_windows == 2 and await flow_keys(h) == {}
