"""Credentials and cross-site defences, against real `stepwise server` and `stepwise dev`."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import STEPWISE, free_port, http, start, stop, wait_healthy, wait_until

API_KEY = "api-0123456789abcdef-secret"
EVENT_KEY = "evt-0123456789abcdef-secret"

APP = '''
import stepwise

app = stepwise.App("sec")

@app.function(id="echo", trigger=stepwise.on_event("ping"))
async def echo(ctx):
    return ctx.event.data
'''


def call(method: str, url: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp_path / "api.key").write_text(API_KEY + "\n")
    proc = start(["server", "--db", str(tmp_path / "s.db"), "--port", str(port),
                  "--host", "127.0.0.1", "--api-key-file", str(tmp_path / "api.key")],
                 tmp_path, {"STEPWISE_EVENT_KEY": EVENT_KEY})
    try:
        wait_healthy(base, proc)
        yield base
    finally:
        stop(proc)
    log = "".join(p.read_text() for p in tmp_path.glob("proc-*.log"))
    assert API_KEY not in log and EVENT_KEY not in log, "a key was printed in full"


def test_server_refuses_to_start_without_keys(tmp_path: Path) -> None:
    result = subprocess.run([*STEPWISE, "server", "--db", str(tmp_path / "x.db"), "--port",
                             str(free_port())], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "--api-key and --event-key" in result.stderr and "--insecure" in result.stderr
    same = subprocess.run([*STEPWISE, "server", "--db", str(tmp_path / "x.db"), "--api-key",
                           API_KEY, "--event-key", API_KEY], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert same.returncode == 2 and "must differ" in same.stderr


MANAGEMENT = [
    ("GET", "/api/v1/runs"), ("GET", "/api/v1/runs/01ABC"), ("POST", "/api/v1/runs/01ABC/cancel"),
    ("POST", "/api/v1/runs/01ABC/replay"), ("POST", "/api/v1/functions/echo/cancel"),
    ("GET", "/api/v1/functions"), ("GET", "/api/v1/events"), ("GET", "/api/v1/events/e1"),
    ("POST", "/api/v1/runs/01ABC/rerun"), ("POST", "/api/v1/runs/replay"),
    ("POST", "/api/v1/runs/cancel"), ("GET", "/api/v1/workers"),
    ("GET", "/api/v1/stats/functions"), ("GET", "/runs/01ABC"), ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/me"),
    ("POST", "/fn/register"), ("POST", "/v1/signals"), ("GET", "/v1/runs/01ABC"),
    ("DELETE", "/v1/runs/01ABC"), ("GET", "/v1/events/e1/runs"), ("GET", "/v1/events/e1"),
    ("GET", "/api/v1/retention"),
    ("PUT", "/api/v1/retention"), ("POST", "/api/v1/prune"), ("POST", "/api/v1/erase"),
    ("GET", "/metrics"), ("GET", "/"), ("GET", "/docs"),
    ("GET", "/openapi.json"), ("GET", "/no/such/page"),
]


def test_every_endpoint_but_events_and_health_needs_the_api_key(server: str) -> None:
    basic = "Basic " + base64.b64encode(f"admin:{API_KEY}".encode()).decode()
    for method, path in MANAGEMENT:
        body = b"{}" if method in ("POST", "PUT") else None
        json_type = {"content-type": "application/json"}
        for headers in ({}, {"authorization": f"Bearer {EVENT_KEY}"},
                        {"authorization": "Bearer wrong"}, {"authorization": "Basic !!"}):
            status, response_headers, text = call(method, server + path, body=body,
                                                  headers={**json_type, **headers})
            assert status == 401, (method, path, headers, status)
            assert "API key" in json.loads(text)["error"]
        assert "www-authenticate" in {k.lower() for k in response_headers}
        for good in (f"Bearer {API_KEY}", basic):
            status, _, _ = call(method, server + path, body=body,
                                headers={**json_type, "authorization": good})
            assert status not in (401, 403), (method, path, status)
    assert call("GET", server + "/healthz")[0] == 200
    # Open: the sign-in page and the dashboard's static files (the package's own, no data).
    for path in ("/signin", "/assets/app.js", "/assets/app.css"):
        assert call("GET", server + path)[0] == 200, path


def test_a_change_posted_from_another_site_is_refused_even_with_the_saved_login(
        server: str) -> None:
    """A browser logged in to the dashboard sends its Basic credential with any request to
    the server, also a form posted by another site: such a change is refused."""
    basic = "Basic " + base64.b64encode(f"admin:{API_KEY}".encode()).decode()
    for origin_headers in ({"origin": "https://evil.example"}, {"origin": "null"},
                           {"sec-fetch-site": "cross-site"}):
        for path in ("/api/v1/runs/cancel", "/api/v1/runs/01ABC/cancel"):
            status, _, text = call("POST", server + path, body=b"{}", headers={
                "authorization": basic, "content-type": "application/json", **origin_headers})
            assert status == 403 and "cross-site" in json.loads(text)["error"]
    same_site = call("POST", server + "/api/v1/runs/cancel", body=b'{"dry_run": true}', headers={
        "authorization": basic, "content-type": "application/json", "origin": server})
    assert same_site[0] == 200
    assert call("GET", server + "/api/v1/runs", headers={
        "authorization": basic, "origin": "https://evil.example"})[0] == 200  # reads: CORS


def test_events_take_the_event_key_or_the_api_key(server: str) -> None:
    event = json.dumps({"name": "ping"}).encode()
    json_type = {"content-type": "application/json"}
    # The Inngest SDKs' route carries the key in its path.
    for key, expected in (("NO_EVENT_KEY_SET", 401), ("wrong", 401), (EVENT_KEY, 200),
                          (API_KEY, 200)):
        status, _, _ = call("POST", f"{server}/e/{key}", body=event, headers=json_type)
        assert status == expected, key
    status, _, text = call("POST", server + "/api/v1/events", body=event, headers=json_type)
    assert status == 401 and "event key" in json.loads(text)["error"]
    for key in (EVENT_KEY, API_KEY):
        ids = http("POST", server + "/api/v1/events", {"name": "ping"},
                   {"authorization": f"Bearer {key}"})["ids"]
        assert len(ids) == 1
    runs = http("GET", server + "/api/v1/runs", headers={"authorization": f"Bearer {API_KEY}"})
    assert runs["runs"] == []  # no worker here; events are stored, no function registered


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "sec_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "sec_app:app", "--port", str(port), "--db", str(tmp_path / "d.db")],
                 tmp_path)
    try:
        wait_healthy(base, proc)
        yield base
    finally:
        stop(proc)


def test_dev_refuses_cross_site_requests(dev: str) -> None:
    event = json.dumps({"name": "ping"}).encode()
    # What a hostile page can make a browser send without a CORS preflight:
    form = call("POST", dev + "/api/v1/events", body=b"name=ping",
                headers={"content-type": "application/x-www-form-urlencoded"})
    text = call("POST", dev + "/api/v1/events", body=event,
                headers={"content-type": "text/plain"})
    assert form[0] == 415 and text[0] == 415
    assert "application/json" in json.loads(form[2])["error"]
    cross = call("POST", dev + "/api/v1/runs/01ABC/cancel",
                 headers={"origin": "https://evil.example"})
    assert cross[0] == 403 and "cross-site" in json.loads(cross[2])["error"]
    fetch_meta = call("POST", dev + "/api/v1/runs/01ABC/cancel",
                      headers={"sec-fetch-site": "cross-site"})
    assert fetch_meta[0] == 403
    rebinding = call("GET", dev + "/api/v1/runs", headers={"host": "evil.example:8288"})
    assert rebinding[0] == 403 and "--allow-host" in json.loads(rebinding[2])["error"]
    # The dashboard's own requests and local tools still work.
    same_origin = call("POST", dev + "/api/v1/events", body=event,
                       headers={"content-type": "application/json", "origin": dev})
    assert same_origin[0] == 200
    sent = json.loads(same_origin[2])["ids"][0]
    runs = wait_until(lambda: http("GET", dev + "/api/v1/runs")["runs"], what="the run")
    assert [r["event_id"] for r in runs] == [sent]  # the refused posts stored nothing


def test_dev_listens_only_on_loopback_unless_insecure(tmp_path: Path) -> None:
    (tmp_path / "sec_app.py").write_text(APP)
    result = subprocess.run([*STEPWISE, "dev", "sec_app:app", "--host", "0.0.0.0", "--port",
                             str(free_port())], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path)
    assert result.returncode == 2 and "--insecure" in result.stderr


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/v1/\x00runs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
], ids=["nul-in-path", "bad-content-length"])
def test_a_request_http_cannot_parse_gets_a_json_400(dev: str, request_bytes: bytes) -> None:
    """uvicorn answers these before the app sees them; the answer is still our JSON shape."""
    import json
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(dev)
    with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
        conn.sendall(request_bytes)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body)["error"].startswith("invalid HTTP request"), body
