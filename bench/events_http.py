"""Events/s accepted by `POST /api/v1/events` in batches of 100, against a real
`stepwise server` process on SQLite; each event starts one run (a function listens to it).

Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

import stepwise
from stepwise.engine import Engine
from stepwise.storage import open_storage

BATCH = 100
#: The server's keys (it refuses to start without both).
EVENT_KEY = "bench-event-key-0123456789abcdef"
API_KEY = "bench-api-key-0123456789abcdef01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def prepare(db: str) -> None:
    """Register one function on `bench.event` so the server routes every event to a run."""
    app = stepwise.App("bench")

    @app.function(id="listener", trigger=stepwise.on_event("bench.event"))
    async def listener(ctx: stepwise.Context) -> None:
        return None

    storage = open_storage(db)
    await storage.open()
    await Engine(storage).register(app.id, [f.definition() for f in app.functions.values()])
    await storage.close()


async def load(base: str, requests: int, concurrency: int) -> float:
    body = [{"name": "bench.event", "data": {"i": i, "user": f"u{i % 97}"}} for i in range(BATCH)]
    headers = {"authorization": f"Bearer {EVENT_KEY}"}
    sent = 0

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def one_client() -> None:
            nonlocal sent
            while sent < requests:
                sent += 1
                response = await client.post("/api/v1/events", json=body, headers=headers)
                response.raise_for_status()

        await client.post("/api/v1/events", json=body[:1], headers=headers)  # warm up
        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return requests * BATCH / (time.perf_counter() - began)


def main(requests: int = 200, concurrency: int = 8) -> dict[str, float]:
    db = f"sqlite:///{tempfile.mkdtemp()}/events.db"
    asyncio.run(prepare(db))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "stepwise.cli", "server", "--db", db,
                               "--port", str(port), "--host", "127.0.0.1",
                               "--event-key", EVENT_KEY, "--api-key", API_KEY],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rate = asyncio.run(load(base, requests, concurrency))
    finally:
        server.terminate()
        server.wait(10)
    return {"events_per_s": rate, "batch": BATCH, "concurrent_requests": concurrency}


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:3]))))
