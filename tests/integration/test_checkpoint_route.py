"""`POST /v1/checkpoint/{run_id}/async` (inngest-js 4.x's checkpointing): the steps an SDK ran
within one call are stored as the call's own answer would be, under the lease the call was made
with (`ctx.qi_id`), and only then; every input is checked (4xx naming what is wrong), the
route takes the signing key's hash outside dev mode, and it serves SDK runs executing now."""

from __future__ import annotations

import json
from typing import Any

import stepwise
from stepwise import signing
from stepwise.access import Access
from stepwise.engine import Lease
from stepwise.engine.outcomes import StepFailed
from stepwise.events import StoredEvent
from stepwise.payloads import Limits
from stepwise.remote import checkpoint, registration
from stepwise.testing import Harness

URL = "http://app.test/api/inngest?fnId=sdk-fn&stepId=step"
KEY = "signkey-prod-" + "5c" * 32


def op(name: str, data: Any, **more: Any) -> dict[str, Any]:
    """A StepRun as inngest-js 4.24 checkpoints it (the fields it sends that matter here)."""
    import hashlib

    return {"id": hashlib.sha1(name.encode()).hexdigest(), "op": "StepRun", "name": name,
            "displayName": name, "userland": {"id": name}, "mode": "sync", "data": data,
            "timing": {"a": 1_700_000_000_000 * 1_000_000, "b": 5_000_000}, **more}


def body(lease: Lease, steps: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"run_id": lease.run_id, **checkpoint.context("sdk-fn", lease), "steps": steps,
            "request_started_at": 1, "ts": 2, **more}


async def setup(h: Harness) -> dict[str, str]:
    """An SDK function and a Python one, each with a run of event `e1`; the worker stopped,
    so nothing executes but what the test leases."""
    await h.worker.stop()
    synced = registration.parse({"appName": "sdk", "url": URL, "functions": [{
        "id": "sdk-fn", "triggers": [{"event": "go"}],
        "steps": {"step": {"runtime": {"type": "http", "url": URL}}}}]})
    await h.engine.register("sdk", synced.functions)
    await h.engine.ingest([StoredEvent("e1", "go", "{}", h.engine.clock.now_ms())])
    return {r["function_id"]: r["id"] for r in await h.engine.list_runs({}, 10)}


def python_app() -> stepwise.App:
    app = stepwise.App("py")

    @app.function(id="py-fn", trigger=stepwise.on_event("go"))
    async def py_fn(ctx: stepwise.Context) -> None:
        return None
    return app


async def test_checkpointed_steps_are_stored_under_the_calls_lease(db: str) -> None:
    async with Harness(python_app(), db, limits=Limits(step_output_bytes=1000)) as h:
        runs = await setup(h)
        run_id = runs["sdk-fn"]
        (lease,) = await h.engine.lease("sdk", ["sdk-fn"], "w1", 1, 60_000)
        url = f"/v1/checkpoint/{run_id}/async"

        ok = await h.http.post(url, json=body(lease, [op("load", {"user": 1})]))
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"run_id": run_id, "stored": 1}
        # Two at once, a StepPlanned among them (Inngest's trace hint: not stored).
        planned = {"id": "x" * 40, "op": "StepPlanned", "name": "later"}
        ok = await h.http.post(url, json=body(lease, [op("a", 1), planned, op("b", [2])]))
        assert ok.json()["stored"] == 2
        # The SDK retries a checkpoint it did not see answered: the first result stands.
        again = await h.http.post(url, json=body(lease, [op("load", {"user": "other"})]))
        assert again.status_code == 200
        # A step being retried (its first attempt failed): checkpointed at its second.
        retried = op("r", "ok")
        await h.engine.apply(lease, [StepFailed(retried["id"], 3, {
            "name": "Error", "message": "flaky"}, 0, 0, name="r")], last=False)
        ok = await h.http.post(url, json=body(lease, [retried]))
        assert ok.json()["stored"] == 1
        run = await h.engine.get_run(run_id)
        assert [(s["name"], s["status"], json.loads(s["output"]), s["attempts"])
                for s in run["steps"]] == [("load", "completed", {"user": 1}, 1),
                                           ("a", "completed", 1, 1), ("b", "completed", [2], 1),
                                           ("r", "completed", "ok", 2)]
        # When the SDK says the step ran (`timing`: its start and duration in ns).
        assert (run["steps"][0]["started_at"], run["steps"][0]["ended_at"]) == (
            1_700_000_000_000, 1_700_000_000_005)
        assert run["status"] == "running"

        # Refused, nothing stored: another take of the run, another worker, a Python run.
        stale = Lease(run_id, "w1", lease.epoch - 1)
        for refused_lease in (stale, Lease(run_id, "w2", lease.epoch)):
            answer = await h.http.post(url, json=body(refused_lease, [op("c", 3)]))
            assert answer.status_code == 409, answer.text
            assert "nothing stored" in answer.json()["error"]
            assert answer.json()["status"] == 409
        (py_lease,) = await h.engine.lease("py", ["py-fn"], "w1", 1, 60_000)
        answer = await h.http.post(f"/v1/checkpoint/{runs['py-fn']}/async",
                                   json={**body(py_lease, [op("c", 3)]), "fn_id": "py-fn"})
        assert answer.status_code == 409 and "not an SDK run" in answer.json()["error"]
        # Cancelled: the SDK is told its dispatch is stale, and stops.
        await h.engine.cancel(run_id)
        answer = await h.http.post(url, json=body(lease, [op("c", 3)]))
        assert answer.status_code == 409
        assert [s["name"] for s in (await h.engine.get_run(run_id))["steps"]] == \
            ["load", "a", "b", "r"]
        assert (await h.engine.get_run(runs["py-fn"]))["steps"] == []


async def test_a_lease_lost_to_another_worker_stores_nothing(db: str) -> None:
    async with Harness(python_app(), db) as h:
        run_id = (await setup(h))["sdk-fn"]
        (first,) = await h.engine.lease("sdk", ["sdk-fn"], "w1", 1, 1_000)
        h.clock.advance(2.0)  # w1's lease expires; w2 takes the run over
        (second,) = await h.engine.lease("sdk", ["sdk-fn"], "w2", 1, 60_000)
        assert second.epoch == first.epoch + 1
        url = f"/v1/checkpoint/{run_id}/async"
        late = await h.http.post(url, json=body(first, [op("a", 1), op("b", 2)]))
        assert late.status_code == 409, late.text
        assert "no longer leased by w1" in late.json()["error"]
        assert (await h.engine.get_run(run_id))["steps"] == []
        assert (await h.http.post(url, json=body(second, [op("a", 1)]))).status_code == 200


async def test_bad_checkpoints_are_refused_naming_what_is_wrong(db: str) -> None:
    async with Harness(python_app(), db, limits=Limits(step_output_bytes=1000)) as h:
        run_id = (await setup(h))["sdk-fn"]
        (lease,) = await h.engine.lease("sdk", ["sdk-fn"], "w1", 1, 60_000)
        url = f"/v1/checkpoint/{run_id}/async"
        good = body(lease, [op("a", 1)])
        cases: list[tuple[Any, int, str]] = [
            ([1], 400, "must be an object"),
            ({**good, "run_id": "other"}, 400, "run_id"),
            ({**good, "fn_id": None}, 400, "fn_id"),
            ({**good, "fn_id": "sdk-other"}, 400, "not the function of run"),
            ({**good, "qi_id": "nope"}, 400, "qi_id"),
            ({**good, "qi_id": 7}, 400, "qi_id"),
            ({**good, "steps": {"a": 1}}, 400, "steps must be a list"),
            ({**good, "steps": ["StepRun"]}, 400, "steps[0] must be an object"),
            ({**good, "steps": [op("a", 1), {**op("s", None), "op": "Sleep"}]}, 400,
             "opcode 'Sleep' cannot be checkpointed"),
            ({**good, "steps": [op("a", 1), op("a", 2)]}, 400, "twice"),
            ({**good, "steps": [{**op("a", 1), "id": ""}]}, 400, "steps[0].id"),
            ({**good, "steps": [{**op("a", 1), "id": "a\x00b"}]}, 400, "steps[0].id"),
            ({**good, "steps": [{**op("a", 1), "timing": {"a": "now"}}]}, 400,
             "steps[0].timing"),
            ({**good, "steps": [{**op("a", 1), "timing": {"a": 1, "b": -1}}]}, 400,
             "steps[0].timing"),
            ({**good, "steps": [op("big", "x" * 2000)]}, 413, "over the limit of 1000"),
            ({**good, "steps": [op("a", {"deep": "\ud800"})]}, 400, "steps[0]"),
        ]
        for sent, status, says in cases:  # as JSON text: a lone surrogate escaped
            answer = await h.http.post(url, content=json.dumps(sent).encode(),
                                       headers={"content-type": "application/json"})
            assert answer.status_code == status, (sent, answer.text)
            assert says in answer.json()["error"], (says, answer.json())
        not_json = await h.http.post(url, content=b"{", headers={"content-type":
                                                                 "application/json"})
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
        assert (await h.engine.get_run(run_id))["steps"] == []
        # Only a trace hint: nothing to store, accepted.
        hint = await h.http.post(url, json=body(lease, [{"id": "p", "op": "StepPlanned"}]))
        assert hint.json() == {"run_id": run_id, "stored": 0}


async def test_outside_dev_mode_it_takes_the_signing_keys_hash(db: str) -> None:
    access = Access(api_key="api-" + "a" * 40, signing_key=KEY)
    async with Harness(python_app(), db, access=access) as h:
        run_id = (await setup(h))["sdk-fn"]
        (lease,) = await h.engine.lease("sdk", ["sdk-fn"], "w1", 1, 60_000)
        url = f"/v1/checkpoint/{run_id}/async"
        sent = body(lease, [op("a", 1)])
        for headers in ({}, {"Authorization": "Bearer"},
                        {"Authorization": f"Bearer {signing.bearer('signkey-prod-' + '00' * 32)}"}):
            answer = await h.http.post(url, json=sent, headers=headers)
            assert answer.status_code == 401, answer.text
        assert (await h.engine.get_run(run_id))["steps"] == []
        answer = await h.http.post(url, json=sent,
                                   headers={"Authorization": f"Bearer {signing.bearer(KEY)}"})
        assert answer.status_code == 200, answer.text


def test_which_sdks_are_offered_checkpointing() -> None:
    assert checkpoint.offered("js:v4.24.0") and checkpoint.offered("js:v5.0.0")
    for sdk in ("js:v3.54.2", "py:v0.5.19", "js:vx", "", None, "go:v0.8.0"):
        assert not checkpoint.offered(sdk), sdk
