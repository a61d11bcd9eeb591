"""Signing in to the dashboard in a real headless Chromium, against a real `stepwise server`
with every role's key and single sign-on through a local OpenID Connect provider (the
`oidc-provider-mock` package, run as its own process), and a `stepwise worker` of the shop
app beside it: a viewer signs in with the form and is refused Replay, signs out; an operator
signs in through the provider and replays; someone the provider knows but no rule admits is
refused; the audit log lists it all. Screenshots under `test-artifacts/dashboard/signin-*`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.browser.conftest import Watched, shot

API_KEY = "browser-api-key-0123456789"
EVENT_KEY = "browser-event-key-0123456789"
OPERATOR_KEY = "browser-operator-key-0123456789"
VIEWER_KEY = "browser-viewer-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]
USERS = [{"sub": "alice", "email": "alice@example.com", "email_verified": True, "name": "Alice"},
         {"sub": "mallory", "email": "mallory@elsewhere.example", "email_verified": True}]


@dataclass
class Deployment:
    base: str
    provider: str

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return http(method, self.base + path, body,
                    headers={"authorization": f"Bearer {API_KEY}"})

    def failed_ledger_post(self, message: str) -> dict[str, Any]:
        sent = http("POST", self.base + "/api/v1/events",
                    {"name": "ledger.post", "data": {"message": message}},
                    headers={"authorization": f"Bearer {EVENT_KEY}"})
        event_id = sent["ids"][0]

        def failed() -> dict[str, Any] | None:
            runs = self.api("GET", f"/api/v1/events/{event_id}")["runs"]
            return runs[0] if runs and runs[0]["status"] == "failed" else None
        return dict(wait_until(failed, 30, "the ledger post failed"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("signin")
    provider_port, port = free_port(), free_port()
    provider = f"http://127.0.0.1:{provider_port}"
    with open(tmp / "provider.log", "w") as log:
        oidc = subprocess.Popen(
            [sys.executable, "-m", "oidc_provider_mock", "--port", str(provider_port),
             "--require-nonce", "true",
             *[arg for user in USERS for arg in ("--user-claims", json.dumps(user))]],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    db = str(tmp / "shop.db")
    env = {"STEPWISE_API_KEY": API_KEY, "STEPWISE_EVENT_KEY": EVENT_KEY,
           "STEPWISE_OPERATOR_KEY": OPERATOR_KEY, "STEPWISE_VIEWER_KEY": VIEWER_KEY,
           "STEPWISE_OIDC_CLIENT_SECRET": "shop-dashboard-secret",
           "STEPWISE_TEST_FIXED": str(tmp / "fixed"), "PYTHONPATH": str(ROOT)}
    server = start(["server", "--db", db, "--port", str(port), "--host", "127.0.0.1",
                    "--oidc-issuer", provider, "--oidc-client-id", "shop-dashboard",
                    "--oidc-role", "alice@example.com=operator"], tmp, env)
    worker = None
    try:
        wait_until(lambda: http("GET", provider + "/.well-known/openid-configuration"), 30,
                   "the OpenID provider answers")
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server)
        worker = start(["worker", "tests.browser.shop:app", "--db", db, "--poll-seconds",
                        "0.05"], tmp, env)
        deployment = Deployment(base, provider)
        # Events start the functions registered when they arrive: wait for the worker's.
        wait_until(lambda: any(f["id"] == "post-ledger" for f in
                               deployment.api("GET", "/api/v1/functions")["functions"]),
                   30, "the worker registered the shop's functions")
        yield deployment
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop(proc)
        oidc.terminate()
        oidc.wait(timeout=10)


def sign_in_with_key(page: Any, key: str, name: str) -> None:
    page.locator("#signin-form").wait_for()
    page.fill("input[name=key]", key)
    page.fill("input[name=name]", name)
    page.click("#signin-form button[type=submit]")


def test_a_viewer_is_refused_replay_an_operator_signed_in_through_sso_replays_it(
        deployment: Deployment, pages: Watched) -> None:
    run = deployment.failed_ledger_post("ledger closed for the night")
    page = pages.open()
    pages.expect(401, f"{deployment.base}/signin")
    pages.not_mine("https://cdn.jsdelivr.net/")  # the provider's page's style sheet

    # Unsigned, a page address leads to the sign-in form, and back after it.
    page.goto(f"{deployment.base}/runs/{run['id']}")
    assert page.url == f"{deployment.base}/signin?next=%2Fruns%2F{run['id']}"
    shot(page, "signin-form")
    sign_in_with_key(page, "not-a-key-of-this-server", "Vic")
    assert "not a viewer, operator or API key" in page.locator("#signin-error").inner_text()
    sign_in_with_key(page, VIEWER_KEY, "Vic")
    page.locator("#run h1").wait_for()
    assert page.url == f"{deployment.base}/runs/{run['id']}"
    assert "Vic (viewer key)" in page.locator("#who").inner_text()
    assert "viewer" in page.locator("#who .badge").inner_text()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["stepwise_session"]["httpOnly"] is True
    assert cookies["stepwise_session"]["sameSite"] == "Lax"

    page.click("#replay")
    refusal = page.locator(".notice.bad").filter(has_text="viewer role")
    refusal.wait_for()
    assert "needs the operator role" in refusal.inner_text()
    shot(page, "signin-viewer-refused-replay")
    assert deployment.api("GET", f"/api/v1/runs/{run['id']}")["status"] == "failed"

    page.click("#signout")
    page.wait_for_url(f"{deployment.base}/signin")
    page.goto(f"{deployment.base}/runs")
    assert page.url.startswith(f"{deployment.base}/signin?next=")

    # Single sign-on: the provider's own form, then back here as alice, an operator.
    page.goto(f"{deployment.base}/signin?next=/runs/{run['id']}")
    page.click("#signin-sso")
    page.wait_for_url(f"{deployment.provider}/**")
    shot(page, "signin-provider-form")
    page.fill("input[name=sub]", "alice")
    page.click("form button[type=submit]:has-text('Authorize')")
    page.locator("#run h1").wait_for()
    assert page.url == f"{deployment.base}/runs/{run['id']}"
    assert "alice@example.com" in page.locator("#who").inner_text()
    assert "operator" in page.locator("#who .badge").inner_text()
    page.click("#replay")
    page.locator(".notice").filter(has_text="Replaying").wait_for()
    shot(page, "signin-operator-replayed")
    wait_until(lambda: deployment.api("GET", f"/api/v1/runs/{run['id']}")["attempts"] > 1,
               30, "the replay started a new attempt")
    page.click("#signout")
    page.wait_for_url(f"{deployment.base}/signin")

    # Known to the provider, admitted by no rule: refused.
    pages.expect(403, f"{deployment.base}/signin/oidc/callback?")
    page.goto(f"{deployment.base}/signin")
    page.click("#signin-sso")
    page.wait_for_url(f"{deployment.provider}/**")
    page.fill("input[name=sub]", "mallory")
    page.click("form button[type=submit]:has-text('Authorize')")
    page.locator("#signin-error").wait_for()
    assert "mallory@elsewhere.example may not use this dashboard" in \
        page.locator("#signin-error").inner_text()
    assert "stepwise_session" not in {c["name"] for c in page.context.cookies()}
    shot(page, "signin-sso-refused")

    # The audit log, read by a viewer: the refusal, the replay, every sign-in and sign-out.
    sign_in_with_key(page, VIEWER_KEY, "Vic")
    page.goto(f"{deployment.base}/audit")
    rows = page.locator("#audit-list tbody tr")
    rows.first.wait_for()
    listed = [row.inner_text() for row in rows.all()]
    shot(page, "signin-audit-log")
    replays = [r for r in listed if "/replay" in r]
    assert len(replays) == 2
    assert "alice@example.com" in replays[0] and "200" in replays[0]
    assert "Vic (viewer key)" in replays[1] and "403" in replays[1]
    assert sum("sign-in" in r and "refused" not in r for r in listed) == 3
    assert any("sign-in refused" in r and "mallory" in r for r in listed)
    assert sum("sign-out" in r for r in listed) == 2
    page.locator("#audit-list a").filter(has_text=run["id"][:6]).first.wait_for()


def test_a_phone_sized_sign_in_page_fits(deployment: Deployment, pages: Watched) -> None:
    page = pages.open(viewport={"width": 390, "height": 800})
    page.goto(f"{deployment.base}/signin")
    page.locator("#signin-form").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "signin-phone")
