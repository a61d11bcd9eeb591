"""Start real stepwise processes for acceptance tests, and wait on them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STEPWISE = [sys.executable, "-m", "stepwise.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    with open(cwd / f"proc-{time.time_ns()}.log", "w") as log:  # the child keeps its own copy
        return subprocess.Popen([*STEPWISE, *args], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def kill9(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill9(proc)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def engine_call(db: str, op: Callable[[Any], Any]) -> Any:
    """`await op(engine)` on an Engine over database `db`, opened for this call alone."""
    import asyncio

    from stepwise.engine import Engine
    from stepwise.storage import open_storage

    async def go() -> Any:
        storage = open_storage(db)
        await storage.open()
        try:
            return await op(Engine(storage))
        finally:
            await storage.close()

    return asyncio.run(go())


def wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        return bool(http("GET", base + "/healthz")["ok"])

    wait_until(healthy, timeout, "server health")


#: What a scripted app answers one call with: status, headers, JSON body.
Answer = tuple[int, dict[str, str], Any]


def in_band(sync: Callable[[str], dict[str, Any]], key: str
            ) -> Callable[[dict[str, Any]], Answer]:
    """A `ScriptedApp`'s sync: `sync(url)` (an out-of-band register body for the URL the
    server asks about) answered in-band, signed with `key` as the SDKs sign it."""
    from stepwise import signing

    def answer(call: dict[str, Any]) -> Answer:
        body = sync(call["body"]["url"])
        reply = {**{k: v for k, v in body.items() if k != "appName"}, "app_id": body["appName"]}
        signature = signing.sign(json.dumps(reply).encode(), key, int(time.time()))
        return 200, {"X-Inngest-Sync-Kind": "in_band", "X-Inngest-Signature": signature}, reply
    return answer


class ScriptedApp:
    """An SDK app played by a test: every POST to it is answered by `answer(call)`, where
    `call` is `{"query", "headers", "body"}` (the query parsed, the body as JSON); a PUT (a
    sync) by `sync(call)` when given (see `in_band`), else 405."""

    def __init__(self, answer: Callable[[dict[str, Any]], Answer],
                 sync: Callable[[dict[str, Any]], Answer] | None = None) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self.do_POST(sync or (lambda call: (405, {}, {"error": "no sync here"})))

            def do_POST(self, reply_with: Callable[[dict[str, Any]], Answer] = answer
                        ) -> None:
                url = urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers["content-length"] or 0))
                                  or b"null")
                status, headers, reply = reply_with({"query": parse_qs(url.query),
                                                     "headers": dict(self.headers),
                                                     "body": body})
                data = json.dumps(reply).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/inngest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
