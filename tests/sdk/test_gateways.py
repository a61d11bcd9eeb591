"""The requests an SDK hands to the server: `step.fetch` (opcode Gateway) and `step.ai.infer`
(AIGateway), with the npm SDK 4.x (`ts/gateways.ts`) and the PyPI SDK (`py_gateway_app.py`)
against `stepwise dev` on SQLite and PostgreSQL, and a fake provider in this process (an HTTP
server speaking OpenAI's chat-completions shape) that records every request stepwise makes.
Also the SDK's StepNotFound answer, a throttle with a burst as an SDK syncs it, the host
policy of `stepwise worker --sdk` (public addresses only unless allowed), and the checks
behind it against a real socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.conftest import POSTGRES_URL, postgres_or_skip
from tests.sdk.test_ts_sdk import node_apps_ready, start_node_app

from stepwise.engine.outcomes import StepCompleted, StepFailed
from stepwise.remote.gateway import Gateway, HostPolicy, parse

ROOT = Path(__file__).resolve().parents[2]
TS_FETCH_TOKEN = "fetch-token-5b1f0c9e7d"
TS_AI_KEY = "sk-test-a1b2c3d4e5f6"
PY_AI_KEY = "sk-py-test-9f8e7d6c5b"
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")


def completion(content: str) -> dict[str, Any]:
    """An OpenAI chat completion, as the API answers one."""
    return {"id": "chatcmpl-9x", "object": "chat.completion", "created": 1733250000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}}


class Provider:
    """A fake provider: answers each path from its script (status, headers, body; or "drop":
    close the connection unanswered), then 200 with a completion; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.scripts: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                with provider.lock:
                    provider.requests.append({
                        "method": self.command, "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode()})
                    script = provider.scripts.get(path) or []
                    reply = script.pop(0) if script else None
                if reply == "drop":
                    self.close_connection = True
                    return
                status, headers, payload = reply or (200, {"content-type": "application/json"},
                                                     json.dumps(completion("fine")))
                data = payload.encode() if isinstance(payload, str) else payload
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def script(self, path: str, *replies: Any) -> None:
        with self.lock:
            self.scripts[path] = list(replies)

    def made(self, marker: str) -> list[dict[str, Any]]:
        """The requests whose path or body holds `marker` (each test's own)."""
        with self.lock:
            return [r for r in self.requests if marker in r["path"] or marker in r["body"]]


class Stack:
    def __init__(self, base: str, db: str, tmp: Path, provider: Provider, py_app: str
                 ) -> None:
        self.base, self.db, self.tmp, self.provider = base, db, tmp, provider
        self.py_app = py_app

    def send(self, name: str, data: dict[str, Any]) -> str:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET", {"name": name, "data": data})
        return str(answer["ids"][0])

    def run_of(self, event_id: str, function_id: str, status: str, timeout: float = 60,
               failures: int = 0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
            run = next((r for r in runs if r["function_id"] == function_id), None)
            if run is None or run["status"] != status:
                return None
            detail = dict(http("GET", self.base + run["url"]))
            return detail if len(detail.get("failures") or []) >= failures else None
        return dict(wait_until(found, timeout, f"{function_id} {status} for {event_id}"))

    def retrying(self, event_id: str, function_id: str) -> dict[str, Any]:
        """The run once a failed attempt is recorded and it waits to retry."""
        def found() -> dict[str, Any] | None:
            runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
            run = next((r for r in runs if r["function_id"] == function_id), None)
            if run is None:
                return None
            detail = dict(http("GET", self.base + run["url"]))
            return detail if detail.get("failures") and detail["waiting_to_retry"] else None
        return dict(wait_until(found, 60, f"{function_id} waiting to retry"))

    def wake(self, run_id: str) -> None:
        http("POST", f"{self.base}/api/v1/runs/{run_id}/wake")

    def stored_text(self) -> str:
        """Every row of every table, as text (to look for secrets)."""
        if self.db.startswith("postgresql"):
            import psycopg

            with psycopg.connect(self.db) as conn:
                tables = [r[0] for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()")]
                return "\n".join(str(conn.execute(f'SELECT * FROM "{t}"').fetchall())
                                 for t in tables)
        import sqlite3

        with sqlite3.connect(self.db.removeprefix("sqlite:///")) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            return "\n".join(str(conn.execute(f'SELECT * FROM "{t}"').fetchall())
                             for t in tables)


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    fake = Provider()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          provider: Provider) -> Iterator[Stack]:
    node_apps_ready()
    tmp = tmp_path_factory.mktemp(f"gateways-{request.param}")
    schema = None
    if request.param == "postgres":
        postgres_or_skip()
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        db = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    else:
        db = f"sqlite:///{tmp / 'dev.db'}"
    port, ts_port, py_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    ts = start_node_app("gateways.ts", ts_port, {"INNGEST_DEV": base}, tmp / "ts.log")
    with open(tmp / "py.log", "w") as log:
        py = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.sdk.py_gateway_app:app", "--port",
             str(py_port)], cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "INNGEST_DEV": base, "PYTHONPATH": str(ROOT)})
    dev = start(["-v", "dev", "-u", f"http://127.0.0.1:{ts_port}/api/inngest",
                 "-u", f"http://127.0.0.1:{py_port}/api/inngest", "--port", str(port),
                 "--db", db], tmp)
    try:
        wait_healthy(base, dev)
        wait_until(lambda: len(http("GET", base + "/api/v1/functions")["functions"]) == 7,
                   90, "the apps' syncs")
        yield Stack(base, db, tmp, provider, f"http://127.0.0.1:{py_port}")
    finally:
        stop(dev)
        stop(ts)
        py.terminate()
        py.wait(10)
        if schema is not None:
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def marker() -> str:
    return uuid.uuid4().hex[:10]


def step_named(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["name"] == name)


def test_step_fetch_makes_the_request_and_the_code_reads_the_response(stack: Stack) -> None:
    report = marker()
    stack.provider.script(f"/reports/{report}", (201, {
        "content-type": "text/plain; charset=utf-8", "x-request-id": "req-1"},
        f"quarterly report {report} is ready"))
    event_id = stack.send("report.requested", {"base": stack.provider.base, "report": report})
    run = stack.run_of(event_id, "ts-gateways-fetch-report", "completed")
    assert run["output"] == {"status": 201, "type": "text/plain; charset=utf-8",
                             "text": f"quarterly report {report} is ready", "words": 5}
    (request,) = stack.provider.made(report)  # made once: the memo answers every replay
    assert request["method"] == "POST"
    assert request["path"] == f"/reports/{report}?format=text"
    assert request["headers"]["x-api-token"] == TS_FETCH_TOKEN
    assert request["headers"]["content-type"] == "text/plain"
    assert request["body"] == f"report {report}, please"
    fetched = step_named(run, "step.fetch: 127.0.0.1")
    assert fetched["status"] == "completed" and fetched["attempts"] == 1
    assert fetched["output"]["status_code"] == 201
    assert fetched["output"]["url"] == f"{stack.provider.base}/reports/{report}?format=text"
    assert fetched["output"]["headers"]["X-Request-Id"] == "req-1"
    assert fetched["output"]["body"] == f"quarterly report {report} is ready"
    assert TS_FETCH_TOKEN not in json.dumps(run)


def test_step_fetch_retries_a_dropped_connection_but_hands_a_500_to_the_code(
        stack: Stack) -> None:
    """A request that could not be made fails the attempt (GatewayError) and is retried under
    the function's retries; an answer, even a 500, is the code's to read (as fetch's)."""
    report = marker()
    stack.provider.script(f"/reports/{report}", "drop",
                          (500, {"content-type": "text/plain"}, "upstream down"))
    event_id = stack.send("report.requested", {"base": stack.provider.base, "report": report})
    run = stack.retrying(event_id, "ts-gateways-fetch-report")
    (failure,) = run["failures"]
    assert failure["error"]["name"] == "GatewayError", failure
    assert "Error making gateway request" in failure["error"]["message"]
    stack.wake(run["id"])
    run = stack.run_of(event_id, "ts-gateways-fetch-report", "completed")
    assert run["output"]["status"] == 500 and run["output"]["text"] == "upstream down"
    assert len(stack.provider.made(report)) == 2
    fetched = step_named(run, "step.fetch: 127.0.0.1")
    assert fetched["attempts"] == 2 and fetched["output"]["status_code"] == 500


def test_step_ai_infer_retries_after_a_500_then_stores_the_completion(stack: Stack) -> None:
    text = f"Article {marker()}: the council approved the new bridge."
    stack.provider.script("/v1/chat/completions", (500, {"content-type": "application/json"},
                          json.dumps({"error": {"message": "The server had an error",
                                                "type": "server_error"}})),
                          (200, {"content-type": "application/json"},
                           json.dumps(completion("Council approves bridge."))))
    event_id = stack.send("article.published", {"base": stack.provider.base, "text": text})
    run = stack.retrying(event_id, "ts-gateways-summarize")
    (failure,) = run["failures"]
    assert failure["error"]["name"] == "AIGatewayError"
    assert failure["error"]["message"] == \
        "Error making AI request: unsuccessful status code: 500"
    stack.wake(run["id"])
    run = stack.run_of(event_id, "ts-gateways-summarize", "completed")
    assert run["output"] == "Council approves bridge."
    requests = stack.provider.made(text)
    assert len(requests) == 2
    for request in requests:  # the same request, as the SDK's OpenAI model built it
        assert request["method"] == "POST" and request["path"] == "/v1/chat/completions"
        assert request["headers"]["authorization"] == f"Bearer {TS_AI_KEY}"
        assert request["headers"]["content-type"] == "application/json"
        assert json.loads(request["body"]) == {
            "model": "gpt-4o-mini", "temperature": 0.2,
            "messages": [{"role": "system", "content": "You summarize articles in one line."},
                         {"role": "user", "content": text}]}
    step = step_named(run, "summarize")
    assert step["attempts"] == 2 and step["output"] == completion("Council approves bridge.")
    stored = stack.stored_text()
    assert text in stored  # the event, at least
    assert TS_AI_KEY not in stored and TS_AI_KEY not in json.dumps(run)
    logs = "".join(p.read_text() for p in stack.tmp.glob("proc-*.log"))
    assert "chat/completions" in logs and TS_AI_KEY not in logs  # logged (-v), no key


def test_step_ai_infer_that_fails_for_good_throws_in_the_code(stack: Stack) -> None:
    text = f"refused {marker()}"
    stack.provider.script("/v1/chat/completions", (401, {"content-type": "application/json"},
                          json.dumps({"error": {"message": "Incorrect API key provided",
                                                "code": "invalid_api_key"}})))
    event_id = stack.send("article.refused", {"base": stack.provider.base, "text": text})
    run = stack.run_of(event_id, "ts-gateways-refused", "completed")
    assert run["output"] == {
        "caught": "Error making AI request: unsuccessful status code: 401",
        "name": "AIGatewayError"}
    step = step_named(run, "summarize")
    assert step["status"] == "failed"
    assert step["error"]["data"] == {"error": {"message": "Incorrect API key provided",
                                               "code": "invalid_api_key"}}
    assert len(stack.provider.made(text)) == 1


def test_python_sdk_step_ai_infer(stack: Stack) -> None:
    text = f"py article {marker()}"
    stack.provider.script("/v1/chat/completions", (503, {"retry-after": "0"}, ""),
                          (200, {"content-type": "application/json"},
                           json.dumps(completion("A short summary."))))
    event_id = stack.send("py.article.published", {"base": stack.provider.base, "text": text})
    # The provider's Retry-After (0 s) stands for the backoff: retried at once, no wake.
    run = stack.run_of(event_id, "py-gateways-summarize", "completed", failures=1)
    assert run["failures"][0]["error"]["message"].endswith("unsuccessful status code: 503")
    assert run["output"] == "A short summary."
    requests = stack.provider.made(text)
    assert len(requests) == 2
    assert requests[-1]["headers"]["authorization"] == f"Bearer {PY_AI_KEY}"
    assert requests[-1]["headers"]["x-team"] == "news"
    assert json.loads(requests[-1]["body"]) == {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    assert step_named(run, "summarize")["output"]["choices"][0]["message"]["content"] == \
        "A short summary."
    assert PY_AI_KEY not in stack.stored_text()


def test_inngest_pys_own_ai_infer_case(stack: Stack) -> None:
    """inngest-py's `ai_infer` case (Anthropic's format), with its assertions: the request's
    path, method, `X-Api-Key`, the adapter's header and body, and the code gets the answer."""
    api_resp_body = {
        "id": f"msg_{marker()}", "type": "message", "role": "assistant",
        "model": "claude-3-5-sonnet-20241022", "content": [{"type": "text", "text": "Hi there!"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 9, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 11,
                  "service_tier": "standard"}}
    stack.provider.script("/v1/messages", (200, {
        "content-type": "application/json", "request-id": "req_011CQ2ngskrxA1XyiMMSqrSm"},
        json.dumps(api_resp_body)))
    def messages() -> list[dict[str, Any]]:
        with stack.provider.lock:
            return [r for r in stack.provider.requests if r["path"] == "/v1/messages"]
    before = len(messages())
    event_id = stack.send("py.anthropic.infer", {"base": stack.provider.base})
    run = stack.run_of(event_id, "py-gateways-anthropic-infer", "completed")
    assert http("GET", f"{stack.py_app}/test/output/{run['id']}") == api_resp_body
    (request,) = messages()[before:]  # once: the code's replays read the stored answer
    assert request["headers"]["x-my-header"] == "my-value"
    assert request["method"] == "POST"
    assert request["headers"]["x-api-key"] == "sk-ant-api03-000000"
    assert "authorization" not in request["headers"]
    assert json.loads(request["body"]) == {
        "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 100,
        "model": "claude-3-5-sonnet-latest"}
    assert step_named(run, "do-the-thing")["output"] == api_resp_body


def test_a_step_the_sdk_cannot_find_fails_the_attempt_as_step_not_found(stack: Stack) -> None:
    """Two steps planned at once; the code names one anew on each execution, so the call that
    asks for it does not find it: the SDK answers StepNotFound after its 10 s search, and
    the run (retries 0) fails with the SDK's message naming the step it found instead."""
    event_id = stack.send("renamed.step", {})
    run = stack.run_of(event_id, "ts-gateways-renamed-step", "failed", timeout=90)
    error = run["error"]
    assert error["name"] == "StepNotFound", error
    assert error["message"].startswith(f'Could not find step "{error["step_id"]}" to run; '
                                       'timed out. Found new steps:')
    found = {s.get("displayName") for s in error["found_steps"]}
    assert "stable" in found and any(str(n).startswith("export-") for n in found), found
    assert step_named(run, "stable")["status"] == "completed"


def test_a_synced_throttle_burst_starts_limit_plus_burst_runs_at_once(stack: Stack) -> None:
    """throttle {limit 1, period 1h, burst 2}: accepted at sync; three runs start at once
    (limit + burst, as Inngest's GCRA admits), the fourth waits its turn (an hour: period /
    limit, once the burst is spent)."""
    function = next(f for f in http("GET", stack.base + "/api/v1/functions")["functions"]
                    if f["id"] == "ts-gateways-burst")
    assert not function.get("problems")
    assert function["flow"]["throttle"]["burst"] == 2
    ids = [stack.send("burst.go", {"n": n}) for n in range(4)]
    done = [stack.run_of(i, "ts-gateways-burst", "completed")["output"] for i in ids[:3]]
    assert done == [0, 1, 2]
    waiting = http("GET", f"{stack.base}/api/v1/events/{ids[3]}")["runs"]
    assert [r["status"] for r in waiting] == ["queued"]


async def _fetch(gateway: Gateway, url: str, timeout_s: float = 5.0) -> Any:
    request = parse("Gateway", "s1", 0, {"url": url, "method": "GET"}, 0, 0, "fetch")
    return await gateway.call(request, timeout_s, lambda: 1)


async def test_a_worker_reaches_only_public_addresses_unless_a_host_is_allowed(
        provider: Provider) -> None:
    """`stepwise worker --sdk`'s default: 127.0.0.1 is refused before any connection (the
    step fails without a retry); allowed by name it is reached; a redirect from an allowed
    host to a private address is refused too; a response over the bound fails the step."""
    path = f"/policy/{marker()}"
    public_only = Gateway(HostPolicy())
    try:
        refused = await _fetch(public_only, provider.base + path)
    finally:
        await public_only.aclose()
    assert isinstance(refused, StepFailed) and not refused.retriable
    assert "127.0.0.1 is at 127.0.0.1, which is not a public address" in \
        refused.error["message"]
    assert provider.made(path) == []  # never connected
    allowed = Gateway(HostPolicy.from_names(["127.0.0.1"]), max_response_bytes=64)
    try:
        provider.script(path, (200, {"content-type": "text/plain"}, "ok"),
                        (302, {"location": f"http://localhost:{provider.base.rsplit(':', 1)[1]}"
                               f"{path}"}, ""),
                        (200, {}, "x" * 65))
        done = await _fetch(allowed, provider.base + path)
        assert isinstance(done, StepCompleted)
        assert json.loads(done.output)["body"] == "ok"
        redirected = await _fetch(allowed, provider.base + path)
        assert isinstance(redirected, StepFailed) and "localhost is at" in \
            redirected.error["message"]
        too_large = await _fetch(allowed, provider.base + path)
        assert isinstance(too_large, StepFailed) and not too_large.retriable
        assert "over 64 bytes" in too_large.error["message"]
    finally:
        await allowed.aclose()
    assert len(provider.made(path)) == 3


class _LoopbackIsFine(HostPolicy):
    """A policy that takes loopback addresses for public ones, to drive the checked path."""

    def refused(self, host: str, addresses: list[str]) -> str | None:
        return None if all(a in ("127.0.0.1", "::1") for a in addresses) else "not loopback"


async def test_a_checked_request_connects_to_the_address_it_checked(provider: Provider) -> None:
    """A host not allowed by name is resolved, checked, and connected to at the address
    checked (each in turn until one connects: localhost may resolve to ::1 first, where the
    provider does not listen), with the name kept in `Host`."""
    path = f"/checked/{marker()}"
    provider.script(path, (200, {"content-type": "text/plain"}, "checked"))
    checked = Gateway(_LoopbackIsFine())
    try:
        port = provider.base.rsplit(":", 1)[1]
        done = await _fetch(checked, f"http://localhost:{port}{path}")
    finally:
        await checked.aclose()
    assert isinstance(done, StepCompleted), done
    assert json.loads(done.output)["body"] == "checked"
    (request,) = provider.made(path)
    assert request["headers"]["host"] == f"localhost:{port}"


def test_stepwise_worker_sends_gateway_requests_only_where_allowed(
        pg_schema: str, tmp_path: Path, provider: Provider) -> None:
    """`stepwise server` and `stepwise worker --sdk` on PostgreSQL, the TypeScript app in
    cloud mode: by default the worker refuses the provider at 127.0.0.1 (the step fails at
    once, no request is made); a worker given `--gateway-allow-host 127.0.0.1` makes it."""
    node_apps_ready()
    api_key, event_key = "api-" + "b" * 40, "event-" + "f" * 40
    signing_key = "signkey-prod-" + "3c" * 32
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {api_key}"}
    server = start(["server", "--db", pg_schema, "--port", str(port), "--host", "127.0.0.1",
                    "--api-key", api_key, "--event-key", event_key,
                    "--signing-key", signing_key], tmp_path)
    app = start_node_app("gateways.ts", app_port, {
        "INNGEST_BASE_URL": base, "INNGEST_SIGNING_KEY": signing_key,
        "INNGEST_EVENT_KEY": event_key}, tmp_path / "app.log")
    app_url = f"http://127.0.0.1:{app_port}/api/inngest"
    worker_args = ["worker", "--sdk", "--db", pg_schema, "--signing-key", signing_key]
    worker = start(worker_args, tmp_path)
    try:
        wait_healthy(base, server)

        def synced() -> bool:
            http("PUT", app_url)
            return any(f["id"] == "ts-gateways-fetch-report" for f in http(
                "GET", base + "/api/v1/functions", headers=auth)["functions"])
        wait_until(synced, 90, "the signed sync")

        def run_of(report: str, status: str) -> dict[str, Any]:
            answer = http("POST", f"{base}/e/{event_key}", {
                "name": "report.requested",
                "data": {"base": provider.base, "report": report}})

            def done() -> dict[str, Any] | None:
                runs = http("GET", f"{base}/api/v1/events/{answer['ids'][0]}",
                            headers=auth)["runs"]
                run = http("GET", base + runs[0]["url"], headers=auth) if runs else None
                return run if run is not None and run["status"] == status else None
            return dict(wait_until(done, 60, f"the run {status}"))

        refused = marker()
        run = run_of(refused, "failed")
        step = step_named(run, "step.fetch: 127.0.0.1")
        assert step["status"] == "failed" and step["attempts"] == 1
        assert "127.0.0.1 is at 127.0.0.1, which is not a public address" in \
            step["error"]["message"]
        assert "--gateway-allow-host" in step["error"]["message"]
        assert provider.made(refused) == []
        stop(worker)
        worker = start([*worker_args, "--gateway-allow-host", "127.0.0.1"], tmp_path)
        allowed = marker()
        provider.script(f"/reports/{allowed}", (200, {"content-type": "text/plain"}, "fine"))
        assert run_of(allowed, "completed")["output"]["text"] == "fine"
        assert len(provider.made(allowed)) == 1
    finally:
        for proc in (worker, server, app):
            stop(proc)
