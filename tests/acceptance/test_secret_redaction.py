"""Inngest's conformance intents for the negative and security cases (pkg/conformance:
auth-validation, malformed-input, secret-redaction, env-nondisclosure), against `stepwise
server` in cloud mode with `stepwise worker --sdk`: wrong credentials are refused everywhere,
malformed syncs are a 400, and no answer, failed run or log line ever holds a key (the signing
key, its bearer hash, the API or event key) or a value of the server's environment."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.acceptance.procs import (
    ScriptedApp,
    free_port,
    http,
    in_band,
    start,
    stop,
    wait_healthy,
    wait_until,
)

from stepwise import signing

API_KEY, EVENT_KEY = "api-" + "b" * 40, "event-" + "c" * 40
SIGNING_KEY = "signkey-prod-" + "3d" * 32
ENV_SECRET = "env-secret-" + "9" * 24


def leaky_sync(url: str) -> dict[str, Any]:
    return {"appName": "leaky", "url": url, "v": "0.1", "sdk": "js:v4.24.0",
            "framework": "express", "functions": [{
                "id": "leaky-f", "name": "f", "triggers": [{"event": "leak.try"}],
                "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 0},
                                   "runtime": {"type": "http", "url": url}}}}]}


def unsigned_app() -> ScriptedApp:
    """An SDK app whose answers (errors) are not signed: misconfigured, or an impostor. Its
    sync is signed (the server asks for it in-band), so that its runs reach it."""
    return ScriptedApp(lambda call: (500, {}, {"name": "Error", "message": "boom"}),
                       sync=in_band(leaky_sync, SIGNING_KEY))


def call(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and everything the server answered (headers and body) as text."""
    request = urllib.request.Request(url, data=body, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, str(answer.headers) + answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, str(exc.headers) + exc.read().decode()


def test_keys_and_environment_are_never_disclosed(tmp_path: Path) -> None:
    secrets = [SIGNING_KEY, SIGNING_KEY.removeprefix("signkey-prod-"), signing.bearer(SIGNING_KEY),
               API_KEY, EVENT_KEY, ENV_SECRET]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = str(tmp_path / "s.db")
    env = {"STEPWISE_TEST_SECRET": ENV_SECRET}
    server = start(["server", "--port", str(port), "--host", "127.0.0.1", "--db", db,
                    "--api-key", API_KEY, "--event-key", EVENT_KEY,
                    "--signing-key", SIGNING_KEY], tmp_path, env)
    worker = start(["worker", "--sdk", "--db", db, "--signing-key", SIGNING_KEY], tmp_path, env)
    app = unsigned_app()
    seen: list[str] = []
    try:
        wait_healthy(base, server)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        sync = leaky_sync(app.url)
        body = json.dumps(sync).encode()
        # auth-validation: no credential, or a wrong one, is refused on every route.
        for method, path, payload in (("POST", "/fn/register", body),
                                      ("POST", "/e/wrong-key", b'{"name": "leak.try"}'),
                                      ("GET", "/api/v1/runs", None),
                                      ("GET", "/api/v1/apps", None),
                                      ("GET", "/metrics", None)):
            for headers in ({}, {"Authorization": "Bearer " + signing.bearer("5f" * 32)},
                            {"Authorization": "Bearer not-the-key"}):
                status, text = call(method, base + path, payload, headers)
                assert status == 401, (method, path, headers, status)
                seen.append(text)
        # malformed-input: syncs that cannot be read are a 400 naming what is wrong.
        bearer = {"Authorization": f"Bearer {signing.bearer(SIGNING_KEY)}"}
        for bad in (b"{", b"[]", json.dumps({**sync, "functions": [{"id": ""}]}).encode()):
            status, text = call("POST", base + "/fn/register", bad, bearer)
            assert status == 400 and '"error"' in text
            seen.append(text)
        status, text = call("POST", base + "/fn/register", body, bearer)
        assert status == 200, text
        seen.append(text)
        (event_id,) = http("POST", f"{base}/e/{EVENT_KEY}", {"name": "leak.try",
                                                            "data": {}})["ids"]

        def failed() -> dict[str, Any] | None:  # the app's answers are not signed: refused
            runs = http("GET", f"{base}/api/v1/events/{event_id}", headers=auth)["runs"]
            run = http("GET", base + runs[0]["url"], headers=auth) if runs else None
            return run if run and run["failures"] else None
        run = wait_until(failed, 60, "the unsigned answer refused")
        assert "AnswerNotSigned" in json.dumps(run["failures"])
        for path in ("/api/v1/runs", f"/api/v1/runs/{run['id']}", "/api/v1/apps",
                     "/api/v1/functions", "/api/v1/workers", f"/api/v1/events/{event_id}",
                     "/metrics", "/healthz", "/openapi.json", "/"):
            status, text = call("GET", base + path, None, auth)
            assert status == 200, path
            seen.append(text)
    finally:
        stop(worker)
        stop(server)
        app.close()
    seen.extend(log.read_text() for log in tmp_path.glob("proc-*.log"))
    assert len(seen) > 20
    for text in seen:
        for secret in secrets:
            assert secret not in text, (secret, text[:300])
