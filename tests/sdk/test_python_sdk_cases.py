"""inngest-py's own function test cases (github inngest/inngest-py,
`tests/test_inngest/test_function/cases/`), the behaviours each checks, against `stepwise dev`
with the PyPI SDK: the functions of `py_cases_app.py`, each test named after its case.

Not here: `ai_infer` (step.ai, a gateway: in test_gateways.py, beside a fake provider),
`batch_that_needs_api` (1 MiB events, over stepwise's default event limit), and the cases
that only exercise the SDK
(`step_callback_args`, `step_callback_kwargs`, `pydantic_event`, `step_context`,
`step_decorator`, the middleware cases, `unexpected_step_during_targeting`); `two_steps` is
covered by test_python_sdk.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "py-cases"
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")


class Cases:
    def __init__(self, base: str, app_url: str) -> None:
        self.base, self.app_url = base, app_url

    def send(self, case: str, *datas: dict[str, Any]) -> list[str]:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET",
                      [{"name": f"py-cases/{case}", "data": d} for d in datas or ({},)])
        assert answer["status"] == 200
        return list(answer["ids"])

    def run_of(self, event_id: str, case: str, status: str, timeout: float = 60,
               failures: int = 0) -> dict[str, Any]:
        """The run once it has `status` (and at least `failures` failed attempts)."""
        def found() -> dict[str, Any] | None:
            runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
            run = next((r for r in runs if r["function_id"] == f"{APP}-{case}"), None)
            if run is None or run["status"] != status:
                return None
            detail = dict(http("GET", self.base + run["url"]))
            return detail if len(detail["failures"]) >= failures else None
        return dict(wait_until(found, timeout, f"{case} {status} for {event_id}"))

    def wake(self, run: dict[str, Any]) -> None:
        http("POST", f"{self.base}/api/v1/runs/{run['id']}/wake")

    def state(self) -> dict[str, Any]:
        return dict(http("GET", self.app_url.replace("/api/inngest", "/test/state")))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cases]:
    tmp = tmp_path_factory.mktemp("py-cases")
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app_url = f"http://127.0.0.1:{app_port}/api/inngest"
    with open(tmp / "app.log", "w") as log:
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.sdk.py_cases_app:app", "--port",
             str(app_port)], cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "INNGEST_DEV": base, "PYTHONPATH": str(ROOT)})
    dev = start(["dev", "-u", app_url, "--port", str(port), "--db", str(tmp / "dev.db")], tmp)
    try:
        wait_healthy(base, dev)
        wait_until(lambda: len(http("GET", base + "/api/v1/functions")["functions"]) == 37,
                   60, "the app's sync")
        yield Cases(base, app_url)
    finally:
        stop(dev)
        app.terminate()
        app.wait(10)


def test_async_fn_with_sync_step_callback(cases: Cases) -> None:
    (event_id,) = cases.send("async_fn_with_sync_step_callback")
    assert cases.run_of(event_id, "async_fn_with_sync_step_callback", "completed")[
        "output"] == "hi"


def test_change_step_error(cases: Cases) -> None:
    """A step's error after its last attempt is given to the function, which raises another:
    the run's error is the app's answer as it sent it."""
    (event_id,) = cases.send("change_step_error")
    run = cases.run_of(event_id, "change_step_error", "failed")
    assert {k: run["error"][k] for k in ("code", "message", "name")} == {
        "code": "unknown", "message": "I am new", "name": "MyError"}
    assert isinstance(run["error"]["stack"], str)
    assert cases.state()["notes"][f"change_step_error/{run['id']}"] == [["ValueError", "foo"]]


def test_client_send(cases: Cases) -> None:
    (event_id,) = cases.send("client_send")
    run = cases.run_of(event_id, "client_send", "completed")
    (sent,) = run["output"]
    assert http("GET", f"{cases.base}/api/v1/events/{sent}")["data"] == {"from": run["id"]}


def test_crazy_ids(cases: Cases) -> None:
    (event_id,) = cases.send("crazy_ids")
    run = cases.run_of(event_id, "crazy_ids%$^&*(_+{|:<?☃️", "completed")
    assert run["output"] == "ok" and run["steps"][0]["name"] == "step%$^&*(_+{|:<?☃️"


def test_debounce(cases: Cases) -> None:
    first, last = cases.send("debounce", {"n": 1}, {"n": 2})
    assert cases.run_of(last, "debounce", "completed")["output"] == {"n": 2}
    assert http("GET", f"{cases.base}/api/v1/events/{first}")["runs"] == []
    assert cases.state()["state"]["debounce/runs"] == 1


def test_dedupe_step_ids(cases: Cases) -> None:
    (event_id,) = cases.send("dedupe_step_ids")
    run = cases.run_of(event_id, "dedupe_step_ids", "completed")
    assert run["output"] == [0, 1]
    assert [(s["name"], s["output"]) for s in run["steps"]] == [("foo", 0), ("foo:1", 1)]
    assert cases.state()["state"][f"dedupe/{run['id']}"] == 2  # each ran once


def test_event_payload(cases: Cases) -> None:
    (event_id,) = cases.send("event_payload", {"foo": {"bar": "baz"}})
    output = cases.run_of(event_id, "event_payload", "completed")["output"]
    assert output["id"] == event_id and output["name"] == "py-cases/event_payload"
    assert output["data"] == {"foo": {"bar": "baz"}} and output["ts"] > 0


def test_function_args(cases: Cases) -> None:
    (event_id,) = cases.send("function_args")
    run = cases.run_of(event_id, "function_args", "completed")
    assert run["output"] == {"attempt": 0, "events": 1, "run_id": run["id"], "step": "Step"}


def test_inconsistent_step_order(cases: Cases) -> None:
    """Steps are memoized by id, not position: the order flips on every call, each step runs
    once."""
    (event_id,) = cases.send("inconsistent_step_order")
    run = cases.run_of(event_id, "inconsistent_step_order", "completed")
    assert sorted(run["output"]) == [1, 2]
    counters = cases.state()["state"]
    assert counters[f"inconsistent/{run['id']}/1"] == 1
    assert counters[f"inconsistent/{run['id']}/2"] == 1


def test_invoke_by_id_and_by_object(cases: Cases) -> None:
    by_id, by_object = cases.send("invoke_by_id")[0], cases.send("invoke_by_object")[0]
    assert cases.run_of(by_id, "invoke_by_id", "completed")["output"] == {"foo": {"bar": 1}}
    assert cases.run_of(by_object, "invoke_by_object", "completed")["output"] == {
        "foo": {"bar": 2}}


def test_invoke_failure(cases: Cases) -> None:
    """The invoked run's error (name, message, stack) reaches the invoking function."""
    (event_id,) = cases.send("invoke_failure")
    assert cases.run_of(event_id, "invoke_failure", "completed")["output"] == {
        "name": "MyError", "message": "oh no", "stack": "str"}


def test_invoke_timeout(cases: Cases) -> None:
    """Inngest's timeout error: its name, its message, no stack (`"stack": null` kept as the
    SDK sent it in its answer)."""
    (event_id,) = cases.send("invoke_timeout")
    run = cases.run_of(event_id, "invoke_timeout", "failed", timeout=30)
    assert run["error"] == {
        "code": "step_errored", "name": "InngestInvokeTimeoutError", "stack": None,
        "message": "Timed out waiting for invoked function to complete"}


def test_logger_attempts_count_per_step(cases: Cases) -> None:
    """With one retry: the body fails once, then a later step fails once; the step's first
    attempt is 0 again, so both recover within the one retry."""
    (event_id,) = cases.send("logger")
    for failures in (1, 2):  # the body's retry, then step_3's: woken instead of waited for
        cases.wake(cases.run_of(event_id, "logger", "queued", failures=failures))
    run = cases.run_of(event_id, "logger", "completed")
    assert run["output"] == [0, 1]


def test_multiple_triggers(cases: Cases) -> None:
    one = http("POST", cases.base + "/e/NO_EVENT_KEY_SET",
               [{"name": "py-cases/multiple_triggers_1", "data": {}},
                {"name": "py-cases/multiple_triggers_2", "data": {}}])["ids"]
    assert [cases.run_of(e, "multiple_triggers", "completed")["output"] for e in one] == [
        "py-cases/multiple_triggers_1", "py-cases/multiple_triggers_2"]


def test_nested_step_run(cases: Cases) -> None:
    """The SDK refuses a step inside a step with `x-inngest-no-retry`: failed at once, even
    with 5 retries, the outer step run once."""
    (event_id,) = cases.send("nested_step_run")
    run = cases.run_of(event_id, "nested_step_run", "failed", timeout=20)
    assert run["error"]["name"] == "CodedError"
    assert run["error"]["message"] == "Nested steps are not supported."
    assert run["error"]["stack"].startswith("inngest._internal.errors.CodedError")
    assert cases.state()["state"][f"nested/{run['id']}"] == 1


def test_no_steps(cases: Cases) -> None:
    (event_id,) = cases.send("no_steps")
    assert cases.run_of(event_id, "no_steps", "completed")["output"] == {"foo": {"bar": 1}}


def test_non_retriable_error(cases: Cases) -> None:
    (event_id,) = cases.send("non_retriable_error")
    run = cases.run_of(event_id, "non_retriable_error", "failed")
    assert {k: run["error"][k] for k in ("code", "message", "name")} == {
        "code": "non_retriable_error", "message": "foo", "name": "NonRetriableError"}
    assert cases.state()["notes"][f"non_retriable/{run['id']}"] == [0]  # never retried


def test_on_failure(cases: Cases) -> None:
    """The failed run's `inngest/function.failed` event: exactly the error's four keys as
    Inngest gives them, the function, the run and the original event."""
    (event_id,) = cases.send("on_failure", {"foo": 1})
    run = cases.run_of(event_id, "on_failure", "failed")
    assert run["error"]["name"] == "MyError" and run["error"]["stack"].startswith("Traceback")
    (handled,) = wait_until(lambda: cases.state()["notes"].get("on_failure"), 30,
                            "the onFailure handler")
    data = handled["data"]
    assert sorted(data["error"]) == ["error", "message", "name", "stack"]
    assert data["error"]["error"] == "invalid status code: 500"
    assert data["error"]["message"] == "intentional failure"
    assert data["function_id"] == f"{APP}-on_failure" and data["run_id"] == run["id"]
    assert data["event"]["data"] == {"foo": 1} and data["event"]["id"] == event_id
    assert handled["name"] == "inngest/function.failed"
    assert handled["attempt"] == 0 and handled["events"] == 1


def test_parallel_group_of_sequential_steps(cases: Cases) -> None:
    (event_id,) = cases.send("parallel_group_of_sequential_steps")
    run = cases.run_of(event_id, "parallel_group_of_sequential_steps", "completed")
    assert run["output"] == [["1a", "1b"], ["2a", "2b", "2c"], "3"]
    assert sorted(s["name"] for s in run["steps"]) == ["1a", "1b", "2a", "2b", "2c", "3"]


def test_parallel_steps(cases: Cases) -> None:
    """An invoke, two steps and a send planned at once (one answer of mixed opcodes): the
    function goes on once all are done, with immediate execution back on (6 calls)."""
    (event_id,) = cases.send("parallel_steps")
    run = cases.run_of(event_id, "parallel_steps", "completed")
    assert run["output"][:3] == [{"foo": {"bar": 3}}, 1, 2]
    assert len(run["output"][3]) == 1
    counters = cases.state()["state"]
    assert counters[f"parallel_steps/{run['id']}/1a"] == 1
    assert counters[f"parallel_steps/{run['id']}/1b"] == 1
    assert counters[f"parallel_steps/{run['id']}/requests"] == 6


def test_retry_after_error(cases: Cases) -> None:
    """`retry-after` in two hours is honoured: no retry on the default backoff (1-2 s)."""
    (event_id,) = cases.send("retry_after_error")
    run = cases.run_of(event_id, "retry_after_error", "queued", failures=1)
    time.sleep(3)  # over the default first backoff; not a sleep under test
    still = cases.run_of(event_id, "retry_after_error", "queued")
    assert len(still["failures"]) == 1
    cases.wake(run)
    assert cases.run_of(event_id, "retry_after_error", "completed")["output"] == 1


def test_sleep_until(cases: Cases) -> None:
    (event_id,) = cases.send("sleep_until")
    run = cases.run_of(event_id, "sleep_until", "sleeping")
    cases.wake(run)  # a day's sleep, ended now
    done = cases.run_of(event_id, "sleep_until", "completed")
    assert done["output"] == "awake" and [s["kind"] for s in done["steps"]] == ["sleep"]


def test_steps_that_needs_api(cases: Cases) -> None:
    (event_id,) = cases.send("steps_that_needs_api")
    run = cases.run_of(event_id, "steps_that_needs_api", "completed")
    assert run["output"] == 1_600_000
    counters = cases.state()["state"]
    assert [counters[f"big/{run['id']}/{i}"] for i in range(4)] == [1, 1, 1, 1]


def test_tuple_output(cases: Cases) -> None:
    (event_id,) = cases.send("tuple_output")
    run = cases.run_of(event_id, "tuple_output", "completed")
    assert run["output"] == [1, 2] and run["steps"][0]["output"] == [1, 2]


def test_unserializable_step_output(cases: Cases) -> None:
    """The app's answer is the run's error as sent: no stack key added."""
    (event_id,) = cases.send("unserializable_step_output")
    run = cases.run_of(event_id, "unserializable_step_output", "failed")
    assert run["error"] == {"code": "output_unserializable", "name": "OutputUnserializableError",
                            "message": '"step_1" returned unserializable data'}


def test_wait_for_event_fulfill_and_timeouts(cases: Cases) -> None:
    fulfilled, unmatched, unnamed = cases.send("wait_for_event", {"id": 123}, {"id": 456},
                                               {"id": 789})
    for event_id in (fulfilled, unmatched, unnamed):
        cases.run_of(event_id, "wait_for_event", "waiting")
    ids = http("POST", cases.base + "/e/NO_EVENT_KEY_SET", [
        {"name": "py-cases/wait_for_event.fulfill", "data": {"id": 123}},
        {"name": "py-cases/wait_for_event.fulfill", "data": {"id": 999}}])["ids"]
    output = cases.run_of(fulfilled, "wait_for_event", "completed")["output"]
    assert output["id"] == ids[0] and output["data"] == {"id": 123} and output["ts"] > 0
    for event_id in (unmatched, unnamed):  # their day-long timeouts, ended now
        cases.wake(cases.run_of(event_id, "wait_for_event", "waiting"))
        assert cases.run_of(event_id, "wait_for_event", "completed")["output"] is None


@pytest.mark.parametrize("matching", [True, False], ids=["cancel", "no_cancel_if_exp_not_match"])
def test_cancel(cases: Cases, matching: bool) -> None:
    """Cancelled while the app's call is in flight; its later answer does not undo it."""
    (event_id,) = cases.send("cancel", {"id": 123})
    run = cases.run_of(event_id, "cancel", "running")
    wait_until(lambda: cases.state()["state"].get(f"cancel/{run['id']}/started"), 10,
               "the call in flight")
    cases.send("cancel.cancel", {"id": 123 if matching else 456})
    if matching:
        cases.run_of(event_id, "cancel", "cancelled")
        time.sleep(2.5)  # the call's answer comes back meanwhile
        assert cases.run_of(event_id, "cancel", "cancelled")["output"] is None
    else:
        assert cases.run_of(event_id, "cancel", "completed")["output"] == "finished"


def test_concurrent_sync_functions(cases: Cases) -> None:
    first, second = cases.send("concurrent_sync_functions", {}, {})
    assert cases.run_of(first, "concurrent_sync_functions", "completed")["output"] == 2
    assert cases.run_of(second, "concurrent_sync_functions", "completed")["output"] == 2


def test_batch(cases: Cases) -> None:
    ids = cases.send("batch", {"n": 1}, {"n": 2}, {"n": 3})
    run = cases.run_of(ids[0], "batch", "completed")
    assert run["output"] == [1, 2, 3]


def test_parallel_mode_default(cases: Cases) -> None:
    """Planned steps settle together before the next call: `[a.1, b.1]`, then `[a.2, b.2]`,
    in 7 calls (2 plans, 4 planned steps, 1 discovery after them)."""
    (event_id,) = cases.send("parallel_mode_default")
    run = cases.run_of(event_id, "parallel_mode_default", "completed")
    assert run["output"] == ["a.1", "b.1", "a.2", "b.2"]
    assert cases.state()["state"][f"parallel_mode_default/{run['id']}/requests"] == 7


def test_parallel_step_disappears(cases: Cases) -> None:
    (event_id,) = cases.send("parallel_step_disappears")
    run = cases.run_of(event_id, "parallel_step_disappears", "failed")
    assert run["error"] == {"code": "step_unexpected", "name": "StepUnexpectedError",
                            "message": 'found step "after" when targeting a different step',
                            "stack": None}


def test_parallel_mode_race(cases: Cases) -> None:
    """Race mode: each completed step is stored and the app asked again at once, the slow
    step still running (and not started twice): `[a.1, a.2, b.1, b.2]` in 9 calls (1 plan,
    4 planned steps, 4 discoveries)."""
    (event_id,) = cases.send("parallel_mode_race")
    run = cases.run_of(event_id, "parallel_mode_race", "completed")
    assert run["output"] == ["a.1", "a.2", "b.1", "b.2"]
    assert cases.state()["state"][f"parallel_mode_race/{run['id']}/requests"] == 9
    assert sorted(s["name"] for s in run["steps"]) == ["a.1", "a.2", "b.1", "b.2"]


def test_singleton_skip(cases: Cases) -> None:
    """Two events in one send: one run executes, the other is skipped while it sleeps (woken
    here instead of waiting out its 5 s)."""
    first, second = cases.send("singleton_skip", {}, {})
    runs = [cases.run_of(e, "singleton_skip", s) for e, s in
            _which_ran(cases, "singleton_skip", first, second)]
    sleeping, skipped = runs
    assert skipped["error"]["name"] == "SingletonSkipped"
    cases.wake(sleeping)
    cases.run_of(sleeping["event_id"], "singleton_skip", "completed")
    # the SDK calls the function again for each step: the run ids it saw, once each
    assert set(cases.state()["notes"]["singleton_skip/runs"]) == {sleeping["id"]}


def _which_ran(cases: Cases, case: str, *events: str) -> list[tuple[str, str]]:
    """The events ordered as (the one whose run sleeps, the one skipped)."""
    def statuses() -> dict[str, str] | None:
        found = {}
        for event_id in events:
            runs = http("GET", f"{cases.base}/api/v1/events/{event_id}")["runs"]
            if not runs:
                return None
            found[event_id] = runs[0]["status"]
        return found if sorted(found.values()) == ["skipped", "sleeping"] else None
    found = wait_until(statuses, 60, f"{case}: one run sleeping, one skipped")
    return sorted(found.items(), key=lambda item: item[1] != "sleeping")


def test_singleton_cancel(cases: Cases) -> None:
    """A second event while the first run sleeps cancels the first; the second runs to its
    end (woken instead of waiting out its sleep)."""
    (first,) = cases.send("singleton_cancel")
    cases.run_of(first, "singleton_cancel", "sleeping")
    (second,) = cases.send("singleton_cancel")
    cancelled = cases.run_of(first, "singleton_cancel", "cancelled")
    cases.wake(cases.run_of(second, "singleton_cancel", "sleeping"))
    done = cases.run_of(second, "singleton_cancel", "completed")
    seen = cases.state()["notes"]["singleton_cancel/runs"]
    assert list(dict.fromkeys(seen)) == [cancelled["id"], done["id"]]
