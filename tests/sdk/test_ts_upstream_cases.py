"""inngest-js's own dev-server test cases that stepwise once failed, as this project's tests:
the functions of `ts/upstream_cases.ts` (the official SDK 4.x on Express) through `stepwise
dev -u URL`, each checked as the upstream test checks it (its file named on each test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.sdk.test_ts_sdk import TS, node_apps_ready, start_node_app

APP = "js-cases"


class Cases:
    def __init__(self, base: str) -> None:
        self.base = base

    def send(self, name: str, data: dict[str, Any] | None = None, **extra: Any) -> str:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET",
                      [{"name": name, "data": data or {}, **extra}])
        assert answer["status"] == 200, answer
        return str(answer["ids"][0])

    def run_of(self, event_id: str, function: str, status: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
            run = next((r for r in runs if r["function_id"] == f"{APP}-{function}"), None)
            if run is not None and run["status"] == "queued":  # a step waiting to retry
                detail = http("GET", self.base + run["url"])
                if any(s["status"] == "retrying" for s in detail["steps"]):
                    http("POST", f"{self.base}/api/v1/runs/{run['id']}/wake")
            return run if run is not None and run["status"] == status else None
        run = wait_until(found, 60, f"{function} {status} for {event_id}")
        return dict(http("GET", self.base + run["url"]))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cases]:
    node_apps_ready()
    tmp: Path = tmp_path_factory.mktemp("js-cases")
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app = start_node_app("upstream_cases.ts", app_port, {"INNGEST_DEV": base}, tmp / "app.log")
    dev = start(["dev", "-u", f"http://127.0.0.1:{app_port}/api/inngest", "--port", str(port),
                 "--db", str(tmp / "dev.db")], tmp, {"PYTHONPATH": str(TS.parents[2])})
    try:
        wait_healthy(base, dev)
        wait_until(lambda: len(http("GET", base + "/api/v1/functions")["functions"]) == 10, 90,
                   "the app's sync")
        yield Cases(base)
    finally:
        stop(dev)
        stop(app)


def test_a_step_errors_cause_reaches_the_next_step(cases: Cases) -> None:
    """test/functions/handling-step-errors: `error.cause` of a step's error, after its last
    attempt, is given back to the function."""
    run = cases.run_of(cases.send("js-cases/step-errors"), "handling-step-errors", "completed")
    assert run["output"] == {"name": "Error", "message": "Oh no!", "cause": "This is the cause"}
    (failed,) = [s for s in run["steps"] if s["name"] == "a"]
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert failed["error"]["cause"]["message"] == "This is the cause"


def test_promise_all_of_two_invokes(cases: Cases) -> None:
    """test/functions/step-invoke: one answer of two InvokeFunction opcodes; a function with
    only a cron trigger can be invoked."""
    run = cases.run_of(cases.send("js-cases/invoke-both"), "step-invoke", "completed")
    assert run["output"] == [{"by": "event", "got": 1}, {"by": "cron"}]
    assert sorted(c["function_id"] for c in run["children"]) == [
        f"{APP}-child-by-cron", f"{APP}-child-by-event"]
    assert sorted((s["name"], s["kind"], s["output"]) for s in run["steps"]) == [
        ("invoke-by-cron", "invoke", {"by": "cron"}),
        ("invoke-by-event", "invoke", {"by": "event", "got": 1})]


def test_invoking_a_missing_function_fails_with_inngests_error(cases: Cases) -> None:
    """test/functions/step-invoke-not-found."""
    run = cases.run_of(cases.send("js-cases/invoke-missing"), "step-invoke-not-found",
                       "completed")
    assert run["output"]["name"] == "Error"
    assert "could not find function" in run["output"]["message"]


def test_a_wildcard_trigger_runs_with_the_events_own_name(cases: Cases) -> None:
    """test/functions/run-payload-wildcard-schema."""
    run = cases.run_of(cases.send("js-cases/wild/foo"), "wildcard", "completed")
    assert run["output"] == {"name": "js-cases/wild/foo"}
    deep = cases.run_of(cases.send("js-cases/wild/a/b"), "wildcard", "completed")
    assert deep["output"] == {"name": "js-cases/wild/a/b"}


def test_attempts_count_per_step(cases: Cases) -> None:
    """test/integration/retry.test: a step after another step's retry starts at attempt 0."""
    run = cases.run_of(cases.send("js-cases/retry"), "retry-per-step", "completed")
    assert run["output"] == {"a": [0, 1], "b": [0, 1]}


def test_request_and_job_ids_reach_the_function(cases: Cases) -> None:
    """test/integration/middleware (anyContext): requestId and jobId are strings, events
    carry `user`."""
    run = cases.run_of(cases.send("js-cases/ids"), "request-ids", "completed")
    assert run["output"] == {"requestId": "string", "jobId": "string", "maxAttempts": 5,
                             "user": {}}


def test_sessions_reach_the_run_and_propagate_to_the_runs_it_starts(cases: Cases) -> None:
    """test/integration/sessions.test: `ctx.sessions` from the event's `meta.sessions`; the
    run's `step.sendEvent` propagates them to the child run, beside the one it sets."""
    event_id = cases.send("js-cases/sessions", meta={"sessions": {"user": "u1"}})
    run = cases.run_of(event_id, "sessions", "completed")
    assert run["output"] == {"user": "u1"}
    (sent,) = [s["output"]["ids"][0] for s in run["steps"] if s["name"] == "send-on"]
    assert cases.run_of(sent, "sessions-child", "completed")["output"] == {
        "chat": "c1", "user": "u1"}
