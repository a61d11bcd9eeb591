"""The HTTP API: validation of every input, idempotent sends, limits, auth, OpenAPI."""

from __future__ import annotations

import json
from typing import Any

import pytest

import stepwise
from stepwise.storage import Tx
from stepwise.testing import Harness


def _count(tx: Tx, table: str) -> int:
    return int(tx.raw_all(f"SELECT COUNT(*) AS n FROM {table}", {})[0]["n"])


def make_app() -> stepwise.App:
    app = stepwise.App("t")

    @app.function(id="echo", trigger=stepwise.on_event("ping"))
    async def echo(ctx: stepwise.Context) -> dict[str, Any]:
        return ctx.event.data

    return app


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed JSON", b'{"name": "ping",', 400, "not valid JSON"),
    ("NaN is not JSON", b'{"name": "ping", "data": {"x": NaN}}', 400, "NaN"),
    ("missing name", b'{"data": {}}', 400, "event.name: Field required"),
    ("empty name", b'{"name": ""}', 400, "event.name"),
    ("blank name", b'{"name": "   "}', 400, "blank"),
    ("name not a string", b'{"name": 5}', 400, "event.name"),
    ("data not an object", b'{"name": "ping", "data": [1]}', 400, "event.data"),
    ("data a string", b'{"name": "ping", "data": "x"}', 400, "event.data"),
    ("unknown field", b'{"name": "ping", "nmae": 1}', 400, "event.nmae"),
    ("id empty", b'{"name": "ping", "id": ""}', 400, "event.id"),
    ("id not a string", b'{"name": "ping", "id": 3}', 400, "event.id"),
    ("ts negative", b'{"name": "ping", "ts": -1}', 400, "event.ts"),
    ("ts a bool", b'{"name": "ping", "ts": true}', 400, "event.ts"),
    ("ts a string of digits", b'{"name": "ping", "ts": "0"}', 400, "event.ts"),
    ("ts with a fraction", b'{"name": "ping", "ts": 1.5}', 400, "event.ts"),
    ("body a number", b"42", 400, "got int"),
    ("empty list", b"[]", 400, "empty"),
    ("list item not an object", b'[{"name": "ping"}, 7]', 400, "events[1] must be an object"),
    ("one bad event rejects the batch", b'[{"name": "ping"}, {"data": {}}]', 400,
     "events[1].name"),
    ("empty body", b"", 400, "not valid JSON"),
    ("invalid UTF-8", b'{"name": "ping", "data": {"x": "\xff\xfe"}}', 400, "UTF-8"),
    ("lone surrogate in data", b'{"name": "ping", "data": {"x": "\\ud800"}}', 400,
     "not valid Unicode"),
    ("lone surrogate in name", b'{"name": "\\udfff"}', 400, "event.name"),
    ("5,000-digit integer", b'{"name": "ping", "data": {"n": ' + b"9" * 5000 + b"}}", 400,
     "digits"),
    ("number too large for a float", b'{"name": "ping", "data": {"n": 1e400}}', 400,
     "not JSON-serializable"),
    ("ts of 10^20", b'{"name": "ping", "ts": 100000000000000000000}', 400, "event.ts"),
    ("NUL in name", b'{"name": "pi\\u0000ng"}', 400, "control characters"),
    ("NUL in id", b'{"name": "ping", "id": "a\\u0000"}', 400, "control characters"),
    ("data nested 101 deep", b'{"name": "ping", "data": {"x": ' + b"[" * 100 + b"]" * 100
     + b"}}", 400, "nested deeper than 100"),
    ("nested past the parser", b'{"name": "ping", "data": {"x": ' + b"[" * 100_000
     + b"]" * 100_000 + b"}}", 400, "nested too deeply"),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), BAD_BODIES,
                         ids=[c[0] for c in BAD_BODIES])
async def test_bad_event_bodies_are_refused_and_store_nothing(
        db: str, case: str, body: bytes, status: int, message: str) -> None:
    async with Harness(make_app(), db) as h:
        response = await h.http.post("/api/v1/events", content=body,
                                     headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert await h.storage.read(_count, "events") == 0
        assert await h.storage.read(_count, "runs") == 0


async def test_sdk_events_keep_their_sessions_as_inngest_resolves_them(db: str) -> None:
    """An app that received events with `meta.sessions` sends its own with `meta` (the JS
    SDK propagates sessions by default): the sender's sessions win, the propagated ones fill
    the free places (at most 5, bytewise key order), a null drops one; bad `meta` is a 400
    naming it, and nothing is stored."""
    async with Harness(make_app(), db) as h:
        sent = await h.http.post("/e/NO_EVENT_KEY_SET", json=[{
            "name": "ping", "data": {"n": 1}, "user": {}, "v": "1",
            "meta": {"sessions": {"user": "u1", "drop": None},
                     "propagated_sessions": {"chat": 3, "drop": "x", "b": "1", "a": "2",
                                             "c": "3", "d": "4"}}}])
        assert sent.status_code == 200 and sent.json()["status"] == 200, sent.text
        stored = await h.engine.storage.read(
            lambda tx: tx.one("get_event", id=sent.json()["ids"][0]))
        assert json.loads(stored["meta"]) == {"sessions": {
            "user": "u1", "a": "2", "b": "1", "c": "3", "chat": "3"}}
        plain = await h.http.post("/e/NO_EVENT_KEY_SET", json={"name": "ping", "data": {}})
        stored = await h.engine.storage.read(
            lambda tx: tx.one("get_event", id=plain.json()["ids"][0]))
        assert stored["meta"] is None
        for meta, named in (("sessions", "events[0].meta"),
                            ({"sessions": {"k": True}}, "events[0].meta.sessions.k"),
                            ({"sessions": {str(i): i for i in range(6)}}, "over 5"),
                            ({"sessions": {"k" * 200: "v"}}, "1 to 128 bytes")):
            bad = await h.http.post("/e/NO_EVENT_KEY_SET",
                                    json={"name": "ping", "data": {}, "meta": meta})
            assert bad.status_code == 400 and named in bad.json()["error"], bad.text
        assert await h.storage.read(_count, "events") == 2


async def test_duplicate_event_id_is_stored_once(db: str) -> None:
    async with Harness(make_app(), db) as h:
        first = await h.http.post("/api/v1/events",
                                  json={"name": "ping", "id": "order-1", "data": {"n": 1}})
        again = await h.http.post("/api/v1/events",
                                  json=[{"name": "ping", "id": "order-1", "data": {"n": 2}},
                                        {"name": "ping", "id": "order-1", "data": {"n": 3}}])
        assert first.json() == {"ids": ["order-1"]}
        assert again.json() == {"ids": ["order-1", "order-1"]}
        # A new id repeated within one request: its first occurrence is the one stored.
        batch = await h.http.post("/api/v1/events",
                                  json=[{"name": "ping", "id": "order-2", "data": {"n": 4}},
                                        {"name": "ping", "id": "order-2", "data": {"n": 5}}])
        assert batch.json() == {"ids": ["order-2", "order-2"]}
        await h.settle()
        assert await h.storage.read(_count, "events") == 2
        runs = await h.runs(event_id="order-1")
        assert len(runs) == 1 and runs[0]["output"] == {"n": 1}
        runs = await h.runs(event_id="order-2")
        assert len(runs) == 1 and runs[0]["output"] == {"n": 4}


async def test_batch_of_events_each_start_runs(db: str) -> None:
    async with Harness(make_app(), db) as h:
        response = await h.http.post("/api/v1/events", json=[
            {"name": "ping", "data": {"i": i}} for i in range(25)])
        ids = response.json()["ids"]
        assert len(set(ids)) == 25
        await h.settle()
        runs = await h.runs(function="echo", status="completed", limit=100)
        assert sorted(r["output"]["i"] for r in runs) == list(range(25))


async def test_oversized_event_and_body_are_413(db: str) -> None:
    limits = stepwise.Limits(event_bytes=1000, request_bytes=5000)
    async with Harness(make_app(), db, limits=limits) as h:
        big_event = {"name": "ping", "data": {"blob": "x" * 1200}}
        response = await h.http.post("/api/v1/events", json=big_event)
        assert response.status_code == 413
        assert "over the limit of 1000 bytes" in response.json()["error"]

        many = [{"name": "ping", "data": {"blob": "x" * 900}} for _ in range(8)]
        response = await h.http.post("/api/v1/events", json=many)
        assert response.status_code == 413
        assert "limit of 5000" in response.json()["error"]

        async def chunks() -> Any:  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b" " * 1000

        response = await h.http.post("/api/v1/events", content=chunks(),
                                     headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert await h.storage.read(_count, "events") == 0


async def test_too_many_events_in_one_request_is_413(db: str) -> None:
    async with Harness(make_app(), db, limits=stepwise.Limits(events_per_request=3)) as h:
        response = await h.http.post("/api/v1/events", json=[{"name": "ping"}] * 4)
        assert response.status_code == 413 and "limit of 3" in response.json()["error"]
        assert (await h.http.post("/api/v1/events", json=[{"name": "ping"}] * 3)
                ).status_code == 200


async def test_nul_in_a_query_or_path_is_400_on_both_backends(db: str) -> None:
    async with Harness(make_app(), db) as h:
        for url in ("/api/v1/runs?function=a%00b", "/api/v1/runs/a%00b",
                    "/api/v1/runs?event_id=%00"):
            response = await h.http.get(url)
            assert response.status_code == 400 and "NUL" in response.json()["error"], url


async def test_step_output_nested_too_deep_fails_the_step_and_lists_still_work(db: str
                                                                              ) -> None:
    app = stepwise.App("deep")

    def nest(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        return value

    @app.function(id="deep", trigger=stepwise.on_event("deep"), retries=0)
    async def deep(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("nest", nest, ctx.event.data["depth"])

    async with Harness(app, db) as h:
        ok = await h.send("deep", {"depth": 100})
        bad = await h.send("deep", {"depth": 300})
        await h.settle()
        assert (await h.run_for(ok, "deep"))["status"] == "completed"
        failed = await h.run_for(bad, "deep")
        assert failed["status"] == "failed"
        assert "nested deeper than 100 levels" in failed["error"]["message"]
        listing = await h.http.get("/api/v1/runs")
        assert listing.status_code == 200 and len(listing.json()["runs"]) == 2


async def test_lists_leave_out_big_outputs_and_page_by_cursor(db: str) -> None:
    app = stepwise.App("big")

    @app.function(id="big", trigger=stepwise.on_event("big"))
    async def big(ctx: stepwise.Context) -> Any:
        return {"blob": "x" * ctx.event.data["size"]}

    async with Harness(app, db) as h:
        for size in (10, 200_000, 20):
            await h.send("big", {"size": size})
        await h.settle()
        page = (await h.http.get("/api/v1/runs", params={"limit": 2})).json()
        assert len(page["runs"]) == 2 and page["next"] == page["runs"][1]["id"]
        second = (await h.http.get("/api/v1/runs", params={"limit": 2, "before": page["next"]})
                  ).json()
        assert len(second["runs"]) == 1 and second["next"] is None
        runs = page["runs"] + second["runs"]
        cut = [r for r in runs if r["output_truncated"]]
        assert len(cut) == 1 and cut[0]["output"] is None
        assert all(r["output"]["blob"] for r in runs if not r["output_truncated"])
        whole = (await h.http.get(cut[0]["url"])).json()
        assert len(whole["output"]["blob"]) == 200_000 and not whole["output_truncated"]


async def test_wrong_method_is_405_with_allow_and_json(db: str) -> None:
    async with Harness(make_app(), db) as h:
        response = await h.http.delete("/api/v1/runs")
        assert response.status_code == 405 and response.headers["allow"] == "GET"
        assert response.json()["error"]


async def test_openapi_documents_400_not_422(db: str) -> None:
    async with Harness(make_app(), db) as h:
        spec = (await h.http.get("/openapi.json")).json()
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert operations and all("422" not in op["responses"] for op in operations)
    assert all("400" in op["responses"] for op in operations)
    assert "401" in spec["paths"]["/api/v1/runs"]["get"]["responses"]


async def test_event_key_is_required_when_set(db: str) -> None:
    async with Harness(make_app(), db, event_key="s3cret") as h:
        body = {"name": "ping"}
        assert (await h.http.post("/api/v1/events", json=body)).status_code == 401
        wrong = await h.http.post("/api/v1/events", json=body,
                                  headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "event key" in wrong.json()["error"]
        ok = await h.http.post("/api/v1/events", json=body,
                               headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert await h.storage.read(_count, "events") == 1


async def test_run_queries_validate_their_parameters(db: str) -> None:
    async with Harness(make_app(), db) as h:
        bad_status = await h.http.get("/api/v1/runs", params={"status": "done"})
        assert bad_status.status_code == 400 and "status" in bad_status.json()["error"]
        bad_limit = await h.http.get("/api/v1/runs", params={"limit": 0})
        assert bad_limit.status_code == 400 and "limit" in bad_limit.json()["error"]
        missing = await h.http.get("/api/v1/runs/does-not-exist")
        assert missing.status_code == 404 and "not found" in missing.json()["error"]
        assert (await h.http.post("/api/v1/runs/nope/replay")).status_code == 404


async def test_run_shape_matches_the_contract(db: str) -> None:
    async with Harness(make_app(), db) as h:
        event_id = await h.send("ping", {"a": 1})
        await h.settle()
        run = await h.run_for(event_id, "echo")
    assert set(run) >= {"id", "function_id", "event_id", "status", "output", "error",
                        "started_at", "ended_at", "attempts", "steps"}
    assert run["status"] == "completed" and run["attempts"] == 1
    assert run["started_at"] and run["ended_at"]


async def test_health_metrics_openapi_and_dashboard(db: str) -> None:
    async with Harness(make_app(), db) as h:
        await h.send("ping")
        await h.settle()
        health = await h.http.get("/healthz")
        # Unfinished runs only: counting the whole history would cost a scan of it.
        assert health.status_code == 200 and health.json() == {"ok": True, "runs": {}}
        metrics = (await h.http.get("/metrics")).text
        assert "stepwise_events_received_total" in metrics
        assert 'stepwise_runs_finished_total{function="echo",status="completed"}' in metrics
        spec = (await h.http.get("/openapi.json")).json()
        body = spec["paths"]["/api/v1/events"]["post"]["requestBody"]
        assert "oneOf" in json.dumps(body)
        assert "/api/v1/runs/{run_id}/replay" in spec["paths"]
        for path in ("/", "/runs", "/runs/some-id", "/failed", "/events", "/events/x",
                     "/functions", "/workers"):
            page = await h.http.get(path)
            assert page.status_code == 200 and '<main id="page">' in page.text, path
        script = await h.http.get("/assets/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert (await h.http.get("/assets/vendor/uPlot.iife.min.js")).status_code == 200
        assert (await h.http.get("/assets/nope.js")).status_code == 404
        functions = (await h.http.get("/api/v1/functions")).json()["functions"]
        assert [f["id"] for f in functions] == ["echo"]


async def test_every_405_names_all_the_methods_of_its_path(db: str) -> None:
    """A path's Allow lists every method the API documents for it, not those of the first
    pattern that matches (`/api/v1/runs/{run_id}` shadowed `/api/v1/runs/cancel`)."""
    async with Harness(make_app(), db) as h:
        spec = (await h.http.get("/openapi.json")).json()
        methods = {path: {m.upper() for m in operations} for path, operations
                   in spec["paths"].items() if "{" not in path}
        assert {"/api/v1/runs/cancel", "/api/v1/events"} <= set(methods)
        for path, allowed in methods.items():
            response = await h.http.request("OPTIONS", path)
            assert response.status_code == 405, (path, response.status_code)
            assert response.headers["allow"] == ", ".join(sorted(allowed)), path
            assert response.json()["error"]
        assert (await h.http.request("OPTIONS", "/api/v1/runs/abc")).headers["allow"] == "GET"


async def test_functions_are_listed_a_page_at_a_time(db: str) -> None:
    from stepwise.definition import EventTrigger, FunctionDefinition

    async with Harness(make_app(), db) as h:
        await h.engine.register("many/app", [
            FunctionDefinition(id=f"f{i:03}", app_id="many/app", triggers=(EventTrigger("x"),))
            for i in range(25)])
        everything = (await h.http.get("/api/v1/functions")).json()
        assert everything["next"] is None
        seen: list[tuple[str, str]] = []
        url: str | None = "/api/v1/functions?limit=7"
        while url is not None:
            page = (await h.http.get(url)).json()
            assert len(page["functions"]) <= 7
            seen += [(f["app_id"], f["id"]) for f in page["functions"]]
            url = page["next"]
        assert seen == [(f["app_id"], f["id"]) for f in everything["functions"]]
        assert len(seen) == len(set(seen)) and ("many/app", "f024") in seen
        after = (await h.http.get("/api/v1/functions", params={
            "after_app": "many/app", "after_id": "f020"})).json()["functions"]
        assert [f["id"] for f in after if f["app_id"] == "many/app"] == [
            "f021", "f022", "f023", "f024"]
