"""The dashboard with an Inngest SDK app (the Python SDK on FastAPI) beside a Python-native app:
the apps page, an SDK run's steps under the code's names, and waking a waiting run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.browser.conftest import shot

ROOT = Path(__file__).resolve().parents[2]
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sdk-dashboard")
    port, app_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp / "app.log", "w") as log:
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.sdk.py_app:app", "--port", str(app_port)],
            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "INNGEST_DEV": url, "PYTHONPATH": str(ROOT)})
    dev = start(["dev", "tests.sdk.native_app:app", "-u",
                 f"http://127.0.0.1:{app_port}/api/inngest", "--port", str(port), "--db",
                 str(tmp / "dev.db")], tmp, {"PYTHONPATH": str(ROOT)})
    try:
        wait_healthy(url, dev)
        wait_until(lambda: any(a["id"] == "py-shop" for a in http(
            "GET", url + "/api/v1/apps")["apps"]), 60, "the SDK app's sync")
        yield url
    finally:
        stop(dev)
        app.terminate()
        app.wait(10)


def run_of(base: str, event_id: str, function_id: str, status: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        runs = http("GET", f"{base}/api/v1/events/{event_id}")["runs"]
        run = next((r for r in runs if r["function_id"] == function_id), None)
        return run if run is not None and run["status"] == status else None
    return dict(wait_until(found, 60, f"{function_id} {status}"))


def test_apps_page_lists_sdk_and_python_apps(base: str, page: Any) -> None:
    page.goto(f"{base}/apps")
    row = page.locator('#app-list tr[data-app="py-shop"]')
    row.wait_for()
    text = row.inner_text()
    assert "py:v0.5.19" in text and "fast_api" in text and "/api/inngest" in text
    assert "py-shop-signup" in text
    native = page.locator('#app-list tr[data-app="billing"]').inner_text()
    assert "stepwise-python" in native and "Python workers" in native and "tax" in native
    assert page.locator("header nav a.active").inner_text() == "Apps"
    shot(page, "sdk-apps")


def test_sdk_run_shows_step_names_and_a_waiting_run_can_be_woken(base: str, page: Any) -> None:
    (event_id,) = http("POST", base + "/e/NO_EVENT_KEY_SET",
                       [{"name": "user.signup", "data": {"user_id": 3}}])["ids"]
    signup = run_of(base, event_id, "py-shop-signup", "completed")
    page.goto(f"{base}/runs/{signup['id']}")
    page.locator("#steps .step").first.wait_for()
    names = page.locator("#steps .step-name").all_inner_texts()
    assert names == ["load-user", "subscribe", "load-user:1"]
    assert page.locator("#timeline .tl-name").all_inner_texts()[:3] == names
    # The step that failed once lists both attempts: the error, then the value.
    subscribe = page.locator("#steps .step").nth(1)
    assert subscribe.locator("tr.attempt .badge").all_inner_texts() == ["failed", "completed"]
    assert subscribe.locator(".error-title").inner_text() == (
        "ConnectionError: mailing-list API timed out")
    # Step outputs are the values the code returned, not the SDK's {"data": ...} memo.
    steps_text = page.locator("#steps").inner_text()
    assert '"subscribed user3@example.com after 2 attempts"' in steps_text
    assert '"data"' not in steps_text
    shot(page, "sdk-run")

    drip = run_of(base, event_id, "py-shop-drip", "waiting")
    page.goto(f"{base}/runs/{drip['id']}")
    page.locator("#wake").click()  # its 3-day wait for a booking ends now, with no event
    page.locator("h1 .badge.s-completed").wait_for()  # the run, not its woken step
    assert http("GET", f"{base}/api/v1/runs/{drip['id']}")["output"] == "no booking"
    shot(page, "sdk-run-woken")


def test_apps_page_marks_a_function_that_cannot_run_and_shows_sync_warnings(
        base: str, page: Any) -> None:
    """A sync using an option this server does not support (a cron trigger's jitter) and a
    field it does not know: the app is registered, the function marked with why its runs
    fail, and the warning shown under the app."""
    url = "http://127.0.0.1:9/api/inngest"
    http("POST", base + "/fn/register", {
        "appName": "marked", "url": url, "v": "0.1", "sdk": "js:v4.24.0",
        "framework": "express", "futureField": True, "functions": [
            {"id": "marked-once", "name": "once",
             "triggers": [{"event": "marked.go"}, {"cron": "0 3 * * *", "jitter": "5m"}],
             "steps": {"step": {"id": "step", "name": "step",
                                "runtime": {"type": "http", "url": url + "?fnId=marked-once"}}}},
            {"id": "marked-fine", "name": "fine", "triggers": [{"event": "marked.go"}],
             "steps": {"step": {"id": "step", "name": "step",
                                "runtime": {"type": "http", "url": url + "?fnId=marked-fine"}}}}]})
    page.goto(f"{base}/apps")
    row = page.locator('#app-list tr[data-app="marked"]')
    row.wait_for()
    assert row.locator(".badge.s-failed").all_inner_texts() == ["cannot run"]
    notes = page.locator('#app-list tr[data-notes="marked"]').inner_text()
    assert "marked-once cannot run on this server as synced" in notes
    assert "triggers[1].jitter is not supported by this server yet" in notes
    assert "Sync warning: the app: field 'futureField' is not known to this server" in notes
    assert page.locator('#app-list tr[data-notes="py-shop"]').count() == 0
    shot(page, "sdk-apps-marked")
