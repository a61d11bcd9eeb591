"""Test helpers: an engine on a hand-advanced clock, driven without real waiting.

    async with Harness(app, db="sqlite:///tmp/t.db") as h:
        await h.send("user.signup", {"user_id": 1})
        await h.settle()            # runs everything due, advancing the clock past retries
        runs = await h.runs()

`SyncHarness` is the same engine for any test, sync or async, with no async test plugin: it
runs on a thread of its own and each method blocks until done. The pytest plugin
(`stepwise.pytest_plugin`) hands one to tests as the `stepwise_harness` fixture.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from .access import Access
from .app import App
from .clock import ManualClock
from .payloads import Limits
from .server import create_server
from .storage import Storage, open_storage
from .worker import Worker

T = TypeVar("T")


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


class SyncHarness:
    """A `Harness` for plain tests: the engine runs on its own thread's event loop, and every
    method blocks until done, so sync tests and async tests (on any loop) use it alike.

        with SyncHarness(app, "sqlite:///tmp/t.db") as h:
            event_id = h.send("user.signup", {"user_id": 1})
            h.settle()                  # everything due now; the clock does not move
            h.advance(days=4)           # the clock moves 4 days; what came due runs
            assert h.run_for(event_id, "drip")["status"] == "completed"
    """

    def __init__(self, app: App, db: str | Storage, *, timeout: float = 60.0,
                 **options: Any) -> None:
        self.app = app
        self.timeout = timeout
        self._db = db
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="stepwise-test-harness")
        self._harness: Harness | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    @property
    def harness(self) -> Harness:
        """The async harness underneath (its `clock`, `engine`, `worker`, `storage`)."""
        if self._harness is None:
            raise RuntimeError("the harness is not started: use it in a `with` block")
        return self._harness

    @property
    def clock(self) -> ManualClock:
        return self.harness.clock

    def __enter__(self) -> SyncHarness:
        self._thread.start()

        async def start() -> Harness:
            harness = Harness(self.app, self._db, **self._options)
            await harness.__aenter__()
            return harness

        try:
            self._harness = self._call(start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._harness is not None:
                self._call(self._harness.__aexit__(*exc))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def send(self, name: str, data: dict[str, Any] | None = None, id: str | None = None) -> str:
        """Send an event (as `POST /api/v1/events` would); returns its id. Nothing runs
        until `settle()` or `advance()`."""
        return self._call(self.harness.send(name, data, id))

    def settle(self, *, advance: bool = False) -> None:
        """Run everything due now, until no run can make progress. The clock does not move:
        a sleep, a retry's backoff or a wait's timeout stays pending until `advance()`.
        With `advance=True` the clock jumps to each next due time (up to a year) instead."""
        self._call(self.harness.settle(advance=advance, timeout=self.timeout))

    def advance(self, delta: timedelta | None = None, *, days: float = 0, hours: float = 0,
                minutes: float = 0, seconds: float = 0) -> None:
        """Move the clock forward, then run what came due (`settle()`)."""
        step = (delta or timedelta()) + timedelta(days=days, hours=hours, minutes=minutes,
                                                  seconds=seconds)
        if step < timedelta():
            raise ValueError("the clock only moves forward")
        self._loop.call_soon_threadsafe(self.harness.clock.advance, step.total_seconds())
        self.settle()

    def run(self, run_id: str) -> dict[str, Any]:
        """A run as `GET /api/v1/runs/{id}` shows it: status, output, error, steps, logs."""
        return self._call(self.harness.run(run_id))

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        """Runs newest first, filtered as `GET /api/v1/runs` (function=, status=, ...)."""
        return self._call(self.harness.runs(**filters))

    def run_for(self, event_id: str, function_id: str) -> dict[str, Any]:
        """The one run of `function_id` that event `event_id` started (with its steps)."""
        return self._call(self.harness.run_for(event_id, function_id))

    def step(self, run_id: str, step_id: str) -> dict[str, Any]:
        """One step of a run: status, attempts, output, error."""
        for step in self.run(run_id)["steps"]:
            if step["id"] == step_id:
                return step  # type: ignore[no-any-return]
        raise AssertionError(f"run {run_id} has no step {step_id!r}")
