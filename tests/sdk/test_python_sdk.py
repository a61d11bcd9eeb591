"""Apps written with Inngest's official Python SDK (PyPI `inngest`, served by FastAPI) run
unchanged on `stepwise dev -u URL`: real processes, the SDK's own sync, event and call
traffic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until

ROOT = Path(__file__).resolve().parents[2]
if os.environ.get("CI") == "true":
    import inngest  # the test extra installs it: in CI its absence is a failure
else:
    inngest = pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")


class Shop:
    def __init__(self, base: str) -> None:
        self.base = base

    def send(self, *events: dict[str, Any]) -> list[str]:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET", list(events))
        assert answer["status"] == 200
        return list(answer["ids"])

    def run_of(self, event_id: str, function_id: str, status: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
            run = next((r for r in runs if r["function_id"] == function_id), None)
            return run if run is not None and run["status"] == status else None
        run = wait_until(found, 60, f"{function_id} {status} for {event_id}")
        return dict(http("GET", self.base + run["url"]))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """`stepwise dev` serving a Python-native app (`native_app.py`) and two SDK apps: one on
    FastAPI (`py_app.py`), one on Flask (`flask_app.py`)."""
    tmp = tmp_path_factory.mktemp("sdk")
    port, app_port, flask_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"INNGEST_DEV": base, "PYTHONPATH": str(ROOT)}
    apps = []
    with open(tmp / "app.log", "w") as log:  # the SDK apps, as their teams would serve them
        for command in (["uvicorn", "tests.sdk.py_app:app", "--port", str(app_port)],
                        ["flask", "--app", "tests.sdk.flask_app:app", "run", "--port",
                         str(flask_port)]):
            apps.append(subprocess.Popen(
                [sys.executable, "-m", *command], cwd=tmp, stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True,
                text=True))
    dev = start(["dev", "tests.sdk.native_app:app",
                 "-u", f"http://127.0.0.1:{app_port}/api/inngest",
                 "-u", f"http://127.0.0.1:{flask_port}/api/inngest",
                 "--port", str(port), "--db", str(tmp / "dev.db")], tmp, env)
    try:
        wait_healthy(base, dev)

        def synced() -> bool:
            return len(http("GET", base + "/api/v1/functions")["functions"]) == 12
        wait_until(synced, 60, "the SDK apps' sync")
        yield Shop(base)
    finally:
        stop(dev)
        for proc in apps:
            stop(proc)


def test_the_sdk_app_syncs_its_functions(shop: Shop) -> None:
    functions = {f["id"]: f for f in http("GET", shop.base + "/api/v1/functions")["functions"]}
    assert sorted(functions) == [
        "greet-signup", "py-mailer-render-receipt", "py-mailer-welcome", "py-shop-basket",
        "py-shop-big", "py-shop-checkout", "py-shop-drip", "py-shop-refuses",
        "py-shop-refuses-failure", "py-shop-signup", "py-shop-vip-only", "tax"]
    assert functions["py-mailer-welcome"]["app_id"] == "py-mailer"
    assert functions["tax"]["app_id"] == "billing" and "url" not in functions["tax"]
    signup = functions["py-shop-signup"]
    assert signup["app_id"] == "py-shop" and signup["retries"] == 3
    assert signup["url"].endswith("/api/inngest?fnId=py-shop-signup&stepId=step")
    assert functions["py-shop-vip-only"]["triggers"] == [
        {"event": "user.signup", "expression": "event.data.vip == true"}]


def test_steps_are_memoized_and_a_failing_step_is_retried(shop: Shop) -> None:
    (vip,) = shop.send({"name": "user.signup", "data": {"user_id": 7, "vip": True},
                        "user": {}, "v": "1"})
    run = shop.run_of(vip, "py-shop-signup", "completed")
    assert run["output"] == {"email": "user7@example.com",
                             "subscribed": "subscribed user7@example.com after 2 attempts",
                             "again": 0}
    assert run["failed_attempts"] == 1
    assert "mailing-list API timed out" in json.dumps(run["failures"])
    assert [(s["name"], s["status"], s["attempts"]) for s in run["steps"]] == [
        ("load-user", "completed", 1), ("subscribe", "completed", 2),
        ("load-user:1", "completed", 1)]
    shown = subprocess.run([sys.executable, "-m", "stepwise.cli", "run", run["id"], "--url",
                            shop.base], capture_output=True, text=True, check=True).stdout
    assert "load-user:1" in shown and "failed attempt 1 of step subscribe" in shown
    assert shop.run_of(vip, "py-shop-vip-only", "completed")["output"] == "welcome, VIP"
    (plain,) = shop.send({"name": "user.signup", "data": {"user_id": 8, "vip": False}})
    shop.run_of(plain, "py-shop-signup", "completed")
    runs = http("GET", f"{shop.base}/api/v1/events/{plain}")["runs"]
    assert "py-shop-vip-only" not in [r["function_id"] for r in runs]  # expression false


def test_parallel_steps_run_each_once_then_the_function_goes_on(shop: Shop) -> None:
    (event_id,) = shop.send({"name": "basket.checked", "data": {}})
    run = shop.run_of(event_id, "py-shop-basket", "completed")
    assert run["output"] == {"tea": 3, "cake": 5, "total": 8}
    assert sorted(s["output"] for s in run["steps"]) == [3, 5, 8]  # plain values, no wrapper
    assert all(s["attempts"] == 1 for s in run["steps"])


def test_wait_for_event_with_a_condition(shop: Shop) -> None:
    (signup,) = shop.send({"name": "user.signup", "data": {"user_id": 21}})
    shop.run_of(signup, "py-shop-drip", "waiting")
    shop.send({"name": "booking.created", "data": {"user_id": 99, "booking_id": "other"}})
    shop.send({"name": "booking.created", "data": {"user_id": 21, "booking_id": "b-1"}})
    run = shop.run_of(signup, "py-shop-drip", "completed")
    assert run["output"] == "booked b-1"


def test_a_non_retriable_error_fails_the_run_at_once(shop: Shop) -> None:
    (bad,) = shop.send({"name": "order.bad", "data": {}})
    run = shop.run_of(bad, "py-shop-refuses", "failed")
    assert run["error"]["name"] == "NonRetriableError"
    assert run["error"]["message"] == "order cannot be processed"
    assert run["failed_attempts"] == 0  # a body failure for good: no retried attempt
    # The run's end is announced as Inngest does; the SDK's onFailure handler is triggered
    # by `inngest/function.failed` for this function (its trigger expression) and runs once.
    failed = http("GET", f"{shop.base}/api/v1/events?name=inngest/function.failed")["events"]
    announced = [e for e in failed if e["data"]["run_id"] == run["id"]]
    assert len(announced) == 1
    data = announced[0]["data"]
    assert data["function_id"] == "py-shop-refuses" and data["event"]["id"] == bad
    assert data["error"]["message"] == "order cannot be processed"
    handler = shop.run_of(announced[0]["id"], "py-shop-refuses-failure", "completed")
    assert handler["output"] == "handled: order cannot be processed"
    finished = http("GET", f"{shop.base}/api/v1/events?name=inngest/function.finished")
    assert any(e["data"]["run_id"] == run["id"] and e["data"]["_inngest"]["status"] == "failed"
               for e in finished["events"])


def test_events_sent_by_the_sdk_client_start_runs(shop: Shop, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    monkeypatch.setenv("INNGEST_DEV", shop.base)
    client = inngest.Inngest(app_id="sender", is_production=False)
    try:
        (event_id,) = client.send_sync(inngest.Event(name="order.bad", data={"from": "sdk"}))
    finally:  # the SDK keeps its HTTP clients open; close them (no ResourceWarning)
        client._http_client._http_client_sync.close()
    assert shop.run_of(event_id, "py-shop-refuses", "failed")


def test_an_unsupported_option_marks_its_function_and_fails_its_runs_by_name(
        shop: Shop) -> None:
    """A sync using an option this server does not support is accepted; the function is
    registered and marked, and its runs fail naming the option (never the app's other
    functions, never the sync)."""
    body = {"appName": "x", "url": "http://127.0.0.1:1/api", "v": "0.1", "sdk": "js",
            "framework": "express", "futureField": 1, "functions": [{
                "id": "x-f", "name": "f",
                "triggers": [{"event": "x.go"}, {"cron": "0 3 * * *", "jitter": "5m"}],
                "steps": {"step": {"id": "step", "name": "step", "runtime": {
                    "type": "http", "url": "http://127.0.0.1:1/api?fnId=x-f&stepId=step"}}}}]}
    assert http("POST", shop.base + "/fn/register", body)["ok"] is True
    functions = {f["id"]: f for f in http("GET", shop.base + "/api/v1/functions")["functions"]}
    assert functions["x-f"]["problems"] == [
        "triggers[1].jitter is not supported by this server yet"]
    (app,) = [a for a in http("GET", shop.base + "/api/v1/apps")["apps"] if a["id"] == "x"]
    assert app["warnings"] == ["the app: field 'futureField' is not known to this server; "
                               "ignored"]
    (event_id,) = shop.send({"name": "x.go", "data": {"id": 1}})
    run = shop.run_of(event_id, "x-f", "failed")
    assert run["error"]["name"] == "FunctionNotRunnable"
    assert "triggers[1].jitter is not supported" in run["error"]["message"]


def test_bad_input_is_refused_by_name(shop: Shop) -> None:
    with pytest.raises(urllib.error.HTTPError) as bad_event:
        http("POST", shop.base + "/e/NO_EVENT_KEY_SET", [{"data": {}}])
    answer = json.loads(bad_event.value.read())
    assert bad_event.value.code == 400 and answer["status"] == 400 and "name" in answer["error"]
    for path in ("/fn/register", "/e/NO_EVENT_KEY_SET"):  # garbage: a 4xx naming it, no 5xx
        for garbage in ([1, 2], "text", {"functions": "no"}, [[{"deep": []}]], None):
            with pytest.raises(urllib.error.HTTPError) as refused:
                http("POST", shop.base + path, garbage)
            assert refused.value.code == 400, (path, garbage)
            assert json.loads(refused.value.read())["error"]


def test_invoke_across_apps_and_languages(shop: Shop) -> None:
    """The FastAPI app invokes a Python-native function and a Flask app's function; a
    Python-native function invokes the Flask app's; an unknown function fails the step."""
    (event_id,) = shop.send({"name": "order.placed", "data": {"amount": 50}})
    run = shop.run_of(event_id, "py-shop-checkout", "completed")
    assert run["output"]["taxed"] == {"tax": 10}
    assert run["output"]["receipt"] == {"receipt": "amount: 50\ntax: 10",
                                        "source": "py-shop-checkout"}
    assert run["output"]["missing"] == "could not find function with ID: nowhere-nothing"
    children = http("GET", shop.base + "/api/v1/runs?function=tax")["runs"]
    assert [c["parent_run_id"] for c in children] == [run["id"]]


def test_one_event_starts_functions_of_every_app(shop: Shop) -> None:
    (event_id,) = shop.send({"name": "user.signup", "data": {"user_id": 9}})
    greeted = shop.run_of(event_id, "greet-signup", "completed")
    assert greeted["output"] == {"user": 9, "rendered": {
        "receipt": "plan: pro", "source": "greet-signup"}}
    assert shop.run_of(event_id, "py-mailer-welcome", "completed")["output"] == \
        "welcome user 9"


def test_a_large_memo_is_read_by_the_sdk_from_the_api(shop: Shop) -> None:
    """Past 1 MiB of step data, calls leave the memo out (`use_api`) and the SDK reads it from
    `/v0/runs/{id}/actions` and `/batch`."""
    (event_id,) = shop.send({"name": "report.big", "data": {"n": 1}})
    run = shop.run_of(event_id, "py-shop-big", "completed")
    assert run["output"] == {"size": 1_200_000, "head": "xxx"}
    # It completed with what the SDK read while executing it; now that it is not executing,
    # these reads answer nothing of it (tests/integration/test_sdk_reads.py reads a live one).
    for path in (f"/v0/runs/{run['id']}/actions", f"/v0/runs/{run['id']}/batch",
                 "/v0/runs/nope/actions"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            http("GET", shop.base + path)
        assert missing.value.code == 404, path
        missing.value.close()
