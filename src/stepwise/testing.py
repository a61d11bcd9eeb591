"""Test helpers: an engine on a hand-advanced clock, driven without real waiting.

    async with Harness(app, db="sqlite:///tmp/t.db") as h:
        await h.send("user.signup", {"user_id": 1})
        await h.settle()            # runs everything due, advancing the clock past retries
        runs = await h.runs()
"""

from __future__ import annotations

import asyncio
from typing import Any

from .access import Access
from .app import App
from .clock import ManualClock
from .payloads import Limits
from .server import create_server
from .storage import Storage, open_storage
from .worker import Worker


class Harness:
    def __init__(self, app: App, db: str | Storage, *, clock: ManualClock | None = None,
                 limits: Limits | None = None, event_key: str | None = None,
                 access: Access | None = None, **worker_options: Any) -> None:
        self.app = app
        self.storage = db if isinstance(db, Storage) else open_storage(db)
        self.clock = clock or ManualClock()
        self.limits = limits or Limits()
        worker_options.setdefault("poll_interval", 0.05)
        # Leases expire on the engine's clock; a test that jumps the clock by hours while a
        # step runs must not see its own run taken away. Crash recovery is tested with real
        # processes and real leases instead.
        worker_options.setdefault("lease_seconds", 10 * 365 * 86400.0)
        # Functions run on the test's own loop, so they can share asyncio objects with it.
        worker_options.setdefault("isolate", False)
        self.worker = Worker(app, self.storage, clock=self.clock, limits=self.limits,
                             **worker_options)
        self.engine = self.worker.engine
        if access is None and event_key is not None:
            access = Access(event_key=event_key)
        self.api = create_server(self.storage, access=access, limits=self.limits,
                                 clock=self.clock)
        self._client: Any = None

    async def __aenter__(self) -> Harness:
        import httpx

        await self.storage.open()
        await self.worker.start()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.api),
                                         base_url="http://stepwise.test")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self.worker.stop(grace=1.0)
        await self.storage.close()

    @property
    def http(self) -> Any:
        """An httpx.AsyncClient talking to the API in-process."""
        return self._client

    async def send(self, name: str, data: dict[str, Any] | None = None,
                   id: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "data": data or {}}
        if id is not None:
            body["id"] = id
        response = await self._client.post("/api/v1/events", json=body)
        response.raise_for_status()
        return response.json()["ids"][0]  # type: ignore[no-any-return]

    async def settle(self, *, advance: bool = True, max_advance: float = 366 * 86400.0,
                     timeout: float = 30.0) -> None:
        """Wait until no run can make progress now; with `advance`, move the clock to the next
        due time (retries, sleeps) and go on, up to `max_advance` seconds in all."""
        limit = self.clock.now() + max_advance
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            seen = self.worker.activity
            due = await self.engine.next_due(self.app.id)
            now = self.clock.now_ms()
            changed = seen != self.worker.activity  # `due` may be stale
            if changed or self.worker.busy or (due is not None and due <= now):
                self.worker.notify()
                await asyncio.sleep(0.002)
                continue
            if due is None or not advance or due / 1000 > limit:
                return
            self.clock.set(due / 1000)
        raise TimeoutError("runs did not settle in time")

    async def wait_for_status(self, run_id: str, status: str, timeout: float = 10.0
                              ) -> dict[str, Any]:
        """Poll a run until it has `status` (for runs that settle() cannot wait out, such as
        one held inside a step by the test)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            run = await self.run(run_id)
            if run["status"] == status:
                return run
            if loop.time() > deadline:
                raise AssertionError(f"run {run_id} is {run['status']}, not {status}")
            self.worker.notify()
            await asyncio.sleep(0.01)

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self._client.get(f"/api/v1/runs/{run_id}")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def runs(self, **filters: Any) -> list[dict[str, Any]]:
        response = await self._client.get("/api/v1/runs", params=filters)
        response.raise_for_status()
        return response.json()["runs"]  # type: ignore[no-any-return]

    async def run_for(self, event_id: str, function_id: str) -> dict[str, Any]:
        runs = await self.runs(event_id=event_id, function=function_id)
        if len(runs) != 1:
            raise AssertionError(f"expected one run of {function_id} for {event_id}, got {runs}")
        return await self.run(runs[0]["id"])
