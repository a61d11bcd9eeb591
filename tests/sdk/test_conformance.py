"""Inngest's conformance cases (inngest/inngest `pkg/conformance`: basic-invoke, steps-serial,
retry-basic, cancel-basic, wait-for-event-basic), run against `stepwise dev` the way Inngest's
runner runs them against its own dev server: a scripted SDK app (the fixture, answering each
call as the case's script says) syncs with `POST /fn/register`, the case's events are sent to
`/e/{key}`, and every call the server makes to the app is checked as the runner checks it:
`stepId=step`, the event, `ctx` (attempt, stack, flags) and the `steps` memo map, exactly.

One deviation, said here so it is not mistaken for the runner's check: the runner's events
carry `user: {"email": ...}` and expect it back verbatim; stepwise does not store an event's
`user` (Inngest calls it deprecated) and sends `user: {}`, so these cases send `user: {}`.
"""

from __future__ import annotations

import hashlib
import json
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import (
    Answer,
    ScriptedApp,
    free_port,
    http,
    start,
    stop,
    wait_healthy,
    wait_until,
)

APP = "conformance-golang-test-suite"
KEY = "test"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


FIRST, SLEEP, SECOND, WAIT = sha1("first step"), sha1("sleep"), sha1("second step"), sha1("wait")


class Fixture(ScriptedApp):
    """The SDK side: records each call and answers it with the case's script."""

    def __init__(self) -> None:
        self.calls: queue.Queue[dict[str, Any]] = queue.Queue()
        self.script: dict[str, Callable[[dict[str, Any]], Answer]] = {}
        super().__init__(self.answer)

    def answer(self, call: dict[str, Any]) -> Answer:
        fn = call["query"]["fnId"][0].removeprefix(f"{APP}-")
        status, headers, reply = self.script[fn](call)
        self.calls.put({**call, "fn": fn})
        return status, {"X-Inngest-Req-Version": "2", **headers}, reply

    def expect(self, fn: str, timeout: float = 10) -> dict[str, Any]:
        """The next call (to `fn`), checked as the runner's `expectRequest` checks any."""
        call = self.calls.get(timeout=timeout)
        assert call["fn"] == fn and call["query"]["stepId"] == ["step"], call["query"]
        body = call["body"]
        assert body["ctx"]["disable_immediate_execution"] is False
        assert body["ctx"]["use_api"] is False and body["use_api"] is False
        assert isinstance(body["ctx"]["stack"]["stack"], list)  # [] when empty, never null
        assert isinstance(body["steps"], dict)
        assert "v" not in body["event"] and isinstance(body["event"]["id"], str)
        return call

    def quiet(self, seconds: float) -> None:
        """No call for `seconds`."""
        with pytest.raises(queue.Empty):
            extra = self.calls.get(timeout=seconds)
            pytest.fail(f"unexpected call: {extra['fn']} {extra['body']['ctx']}")


def event_of(call: dict[str, Any]) -> dict[str, Any]:
    """The call's event as the runner compares it: `id` and `ts` zeroed."""
    return {k: v for k, v in call["body"]["event"].items() if k not in ("id", "ts")}


def ctx_of(call: dict[str, Any]) -> dict[str, Any]:
    ctx = call["body"]["ctx"]
    return {"attempt": ctx["attempt"], "stack": ctx["stack"], "step_id": ctx["step_id"]}


def function(slug: str, event: str, **config: Any) -> dict[str, Any]:
    fid = f"{APP}-{slug}"
    return {"id": fid, "name": slug, "triggers": [{"event": event}], **config,
            "steps": {"step": {"id": "step", "name": slug, "retries": {"attempts": 3},
                               "runtime": {"url": f"{{url}}?fnId={fid}&step=step"}}}}


FUNCTIONS = [
    function("test-suite-simple-fn", "tests/function.test"),
    function("test-suite-step-test", "tests/step.test"),
    function("test-suite-retry-test", "tests/retry.test"),
    function("test-suite-cancel-test", "tests/cancel.test", cancel=[{
        "event": "cancel/please", "if": "async.data.request_id == event.data.request_id"}]),
    function("test-suite-wait-for-event", "tests/wait.test"),
]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def conformance(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[str, Fixture]]:
    tmp: Path = tmp_path_factory.mktemp("conformance")
    if request.param == "sqlite":
        db = str(tmp / "dev.db")
    else:
        from tests.conftest import POSTGRES_URL, postgres_or_skip

        postgres_or_skip()
        import psycopg

        name = f"conformance_{time.time_ns()}"
        db = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    fixture = Fixture()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dev = start(["dev", "--port", str(port), "--db", db], tmp)
    try:
        wait_healthy(base, dev)
        body = json.loads(json.dumps({
            "url": fixture.url, "v": "1", "deployType": "ping", "sdk": "go:v0.11.0",
            "appName": APP, "framework": "conformance", "functions": FUNCTIONS,
        }).replace("{url}", fixture.url))
        assert http("POST", base + "/fn/register", body)["ok"] is True
        yield base, fixture
    finally:
        stop(dev)
        fixture.close()
        if request.param == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def send(base: str, event: dict[str, Any]) -> str:
    answer = http("POST", f"{base}/e/{KEY}", event)
    assert answer["status"] == 200
    return str(answer["ids"][0])


def run_of(base: str, event_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        runs = http("GET", f"{base}/api/v1/events/{event_id}")["runs"]
        return dict(http("GET", base + runs[0]["url"])) if runs else None
    return wait_until(found, 30, f"the run of {event_id}")


def ops(*opcodes: dict[str, Any]) -> Answer:
    return 206, {}, list(opcodes)


def test_basic_invoke(conformance: tuple[str, Fixture]) -> None:
    base, app = conformance
    app.script["test-suite-simple-fn"] = lambda call: (
        200, {}, {"name": call["body"]["event"]["name"], "body": "ok"})
    sent = {"name": "tests/function.test", "data": {"test": True}, "user": {}}
    event_id = send(base, sent)
    call = app.expect("test-suite-simple-fn", 5)
    assert event_of(call) == sent
    assert ctx_of(call) == {"attempt": 0, "stack": {"stack": [], "current": 0},
                            "step_id": "step"}
    assert call["body"]["steps"] == {}
    assert wait_until(lambda: run_of(base, event_id)["status"] == "completed", 30, "completed")
    assert run_of(base, event_id)["output"] == {"name": "tests/function.test", "body": "ok"}


def test_steps_serial(conformance: tuple[str, Fixture]) -> None:
    base, app = conformance

    def script(call: dict[str, Any]) -> Answer:
        steps = call["body"]["steps"]
        if FIRST not in steps:
            return ops({"op": "StepRun", "id": FIRST, "name": "first step",
                        "data": "first step"})
        if SLEEP not in steps:
            return ops({"op": "Sleep", "id": SLEEP, "name": "2s"})
        if SECOND not in steps:
            return ops({"op": "StepRun", "id": SECOND, "name": "second step",
                        "data": {"first": "first step", "second": True}})
        return 200, {}, {"name": "tests/step.test", "body": "ok"}
    app.script["test-suite-step-test"] = script
    sent = {"name": "tests/step.test", "data": {"steps": {"ok": "yes"}}, "user": {}}
    event_id = send(base, sent)
    first = app.expect("test-suite-step-test")
    assert (ctx_of(first)["stack"], first["body"]["steps"]) == (
        {"stack": [], "current": 0}, {})
    after_first = app.expect("test-suite-step-test")
    assert event_of(after_first) == sent
    assert (ctx_of(after_first)["stack"], after_first["body"]["steps"]) == (
        {"stack": [FIRST], "current": 1}, {FIRST: {"data": "first step"}})
    # The 2 s sleep: ended by the operator's wake instead of waiting it out.
    run = wait_until(lambda: (r := run_of(base, event_id))["status"] == "sleeping" and r,
                     30, "the run asleep")
    app.quiet(0.5)
    http("POST", f"{base}/api/v1/runs/{run['id']}/wake")
    after_sleep = app.expect("test-suite-step-test")
    assert (ctx_of(after_sleep), after_sleep["body"]["steps"]) == (
        {"attempt": 0, "stack": {"stack": [FIRST, SLEEP], "current": 2}, "step_id": "step"},
        {FIRST: {"data": "first step"}, SLEEP: None})
    last = app.expect("test-suite-step-test")
    assert (ctx_of(last)["stack"], last["body"]["steps"]) == (
        {"stack": [FIRST, SLEEP, SECOND], "current": 3},
        {FIRST: {"data": "first step"}, SLEEP: None,
         SECOND: {"data": {"first": "first step", "second": True}}})
    done = wait_until(lambda: (r := run_of(base, event_id))["status"] == "completed" and r,
                      30, "completed")
    assert done["output"] == {"name": "tests/step.test", "body": "ok"}
    assert [s["output"] for s in done["steps"]] == [
        "first step", None, {"first": "first step", "second": True}]


def test_retry_basic(conformance: tuple[str, Fixture]) -> None:
    """A step error is retried with attempt + 1 (the errored attempt is not memoized); after
    the step succeeds the next call is attempt 0; a function-level 500 is retried whole."""
    base, app = conformance
    body_attempts: list[int] = []

    def script(call: dict[str, Any]) -> Answer:
        ctx, steps = call["body"]["ctx"], call["body"]["steps"]
        if FIRST not in steps:
            if ctx["attempt"] == 0:
                return ops({"op": "StepError", "id": FIRST, "name": "first step",
                            "error": {"name": "Error", "message": "broken"}, "data": None})
            return ops({"op": "StepRun", "id": FIRST, "name": "first step", "data": "yes: 2"})
        body_attempts.append(ctx["attempt"])
        if ctx["attempt"] == 0:
            return 500, {}, {"message": "broken func", "name": "Error"}
        return 200, {}, {"name": "tests/retry.test", "body": "ok"}
    app.script["test-suite-retry-test"] = script
    event_id = send(base, {"name": "tests/retry.test", "data": {"steps": {"ok": "yes"}},
                           "user": {}})
    failed = app.expect("test-suite-retry-test")
    assert (ctx_of(failed)["attempt"], failed["body"]["steps"]) == (0, {})
    run = wait_until(lambda: (r := run_of(base, event_id))["status"] == "queued" and r,
                     30, "the step waiting to retry")
    http("POST", f"{base}/api/v1/runs/{run['id']}/wake")
    retried = app.expect("test-suite-retry-test")
    assert (ctx_of(retried), retried["body"]["steps"]) == (
        {"attempt": 1, "stack": {"stack": [], "current": 0}, "step_id": "step"}, {})
    after_step = app.expect("test-suite-retry-test")
    assert (ctx_of(after_step), after_step["body"]["steps"]) == (
        {"attempt": 0, "stack": {"stack": [FIRST], "current": 1}, "step_id": "step"},
        {FIRST: {"data": "yes: 2"}})
    again = app.expect("test-suite-retry-test", 45)  # the 500, retried after its backoff
    assert (ctx_of(again), again["body"]["steps"]) == (
        {"attempt": 1, "stack": {"stack": [FIRST], "current": 1}, "step_id": "step"},
        {FIRST: {"data": "yes: 2"}})
    done = wait_until(lambda: (r := run_of(base, event_id))["status"] == "completed" and r,
                      30, "completed")
    assert done["output"] == {"name": "tests/retry.test", "body": "ok"}
    assert body_attempts == [0, 1]


def test_cancel_basic(conformance: tuple[str, Fixture]) -> None:
    base, app = conformance
    app.script["test-suite-cancel-test"] = lambda call: ops(
        {"op": "Sleep", "id": SLEEP, "name": "1s"})
    event_id = send(base, {"name": "tests/cancel.test",
                           "data": {"request_id": "123", "whatever": "x"}, "user": {}})
    app.expect("test-suite-cancel-test")
    send(base, {"name": "cancel/please", "data": {"request_id": "999"}})  # not its request
    send(base, {"name": "cancel/please", "data": {"request_id": "123"}})
    wait_until(lambda: run_of(base, event_id)["status"] == "cancelled", 30, "cancelled")
    app.quiet(2.0)  # its 1 s sleep is over: the app is not called again
    assert run_of(base, event_id)["status"] == "cancelled"


def test_wait_for_event_basic(conformance: tuple[str, Fixture]) -> None:
    """The matched event comes back in the memo as it was sent: its own id and ts, `user`
    present, nothing added."""
    base, app = conformance

    def script(call: dict[str, Any]) -> Answer:
        if WAIT not in call["body"]["steps"]:
            return ops({"op": "WaitForEvent", "id": WAIT, "name": "wait", "opts": {
                "event": "test/resume", "timeout": "10s",
                "if": "async.data.resume == true && async.data.id == event.data.id"}})
        return 200, {}, {"result": call["body"]["steps"][WAIT]["data"]}
    app.script["test-suite-wait-for-event"] = script
    event_id = send(base, {"name": "tests/wait.test", "data": {"id": "123"}, "user": {}})
    app.expect("test-suite-wait-for-event")
    wait_until(lambda: run_of(base, event_id)["status"] == "waiting", 30, "waiting")
    send(base, {"name": "test/resume", "data": {"id": "ignored"}})
    app.quiet(1.0)
    ts = int(time.time() * 1000)
    send(base, {"id": "resume", "name": "test/resume", "data": {"id": "123", "resume": True},
                "ts": ts, "user": {}})
    resumed = app.expect("test-suite-wait-for-event")
    assert (ctx_of(resumed)["stack"], resumed["body"]["steps"]) == (
        {"stack": [WAIT], "current": 1},
        {WAIT: {"name": "test/resume", "data": {"id": "123", "resume": True}, "user": {},
                "ts": ts, "id": "resume"}})
    done = wait_until(lambda: (r := run_of(base, event_id))["status"] == "completed" and r,
                      30, "completed")
    assert done["output"] == {"result": {"id": "123", "resume": True}}
