"""The worker: leases runs through the engine, executes them in process, renews its leases.

A killed worker simply stops renewing: its leases expire and any worker takes the runs over,
replaying their stored steps (at-least-once for a step's code, exactly-once for its result).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor

from .app import App
from .clock import Clock
from .engine import Engine
from .errors import ExecutionStopped, LeaseLost, RunCancelled
from .execution import Execution, ExecutorEnv
from .metrics import Metrics
from .payloads import Limits, new_id
from .storage import Storage

log = logging.getLogger("stepwise.worker")


class Worker:
    def __init__(
        self,
        app: App,
        storage: Storage,
        *,
        clock: Clock | None = None,
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        limits: Limits | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("worker concurrency must be at least 1")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self.app = app
        self.storage = storage
        self.clock = clock or Clock()
        self.engine = Engine(storage, self.clock)
        self.concurrency = concurrency
        self.lease_ms = int(lease_seconds * 1000)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._active: dict[str, asyncio.Task[None]] = {}
        self._leasing = False
        #: Bumped whenever the worker leases or finishes work, so observers can tell that
        #: something changed while they looked away (see testing.Harness.settle).
        self.activity = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.env = ExecutorEnv(
            engine=self.engine, limits=limits or Limits(), metrics=Metrics(),
            owner=self.id, inline=lambda: len(self._active) <= 1,
            threads=ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stepwise-fn"))

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.storage.on_new_work(self.notify)
        await self.engine.register(self.app.id, [f.definition() for f in
                                                 self.app.functions.values()])
        self._tasks = [asyncio.create_task(self._lease_loop(), name="stepwise-lease"),
                       asyncio.create_task(self._heartbeat_loop(), name="stepwise-heartbeat")]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop leasing; wait up to `grace` seconds for executions, then abandon them (their
        leases expire and another worker resumes them)."""
        self._stopping = True
        self.notify()
        if self._active:
            await asyncio.wait(list(self._active.values()), timeout=grace)
        for task in [*self._tasks, *self._active.values()]:
            task.cancel()
        for task in [*self._tasks, *self._active.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.env.threads.shutdown(wait=False, cancel_futures=True)

    def notify(self) -> None:
        self._wake.set()

    @property
    def busy(self) -> bool:
        """True while the worker holds or is taking work (tests wait for it to be idle)."""
        return self._leasing or bool(self._active)

    # --- loops -----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._active)
            leased: list[str] = []
            due: int | None = None
            try:
                if free > 0:
                    self._leasing = True
                    leased = await self.engine.lease(self.app.id, self.id, free, self.lease_ms)
                    for run_id in leased:
                        self._active[run_id] = asyncio.create_task(self._execute(run_id))
                    self.activity += 1
                    self._leasing = False
                if free > 0 and len(leased) == free:
                    continue  # there may be more waiting
                if free > 0:  # when full, only a finished execution (a wake) frees a slot
                    due = await self.engine.next_due(self.app.id)
                    if due is not None and due <= self.clock.now_ms():
                        due = None  # due but held back by a concurrency limit: wait for a wake
            except Exception:
                log.exception("worker %s: leasing failed; retrying", self.id)
            finally:
                self._leasing = False
            await self.clock.wait(self._wake, None if due is None else due / 1000,
                                  self.poll_interval)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_seconds / 3)
            if self._active:
                try:
                    await self.engine.renew(self.id, list(self._active), self.lease_ms)
                except Exception:
                    log.exception("worker %s: lease renewal failed", self.id)

    async def _execute(self, run_id: str) -> None:
        try:
            state = await self.engine.load(run_id)
            if state is None:
                return
            function = self.app.get(state.run["function_id"])
            if function is None:
                log.error("run %s: function %r is not in app %r; releasing it for a minute",
                          run_id, state.run["function_id"], self.app.id)
                await self.engine.release(run_id, self.id, 60_000)
                return
            await Execution(self.env, function, state).run()
        except LeaseLost as exc:
            log.warning("run %s: %s; this execution stops", run_id, exc)
        except RunCancelled:
            log.info("run %s was cancelled; stopped at a step boundary", run_id)
        except ExecutionStopped:
            pass
        except Exception:
            log.exception("run %s: execution failed; its lease will expire and it will be "
                          "retried", run_id)
        finally:
            self._active.pop(run_id, None)
            self.activity += 1
            self.notify()
