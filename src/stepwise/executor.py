"""Executors: what runs a leased run's code for a `Worker`, which only leases, renews leases,
heartbeats and enforces attempt timeouts (`worker.py`).

An executor executes a `Job` (a leased run) until the run parks or ends, reporting what
happened as outcomes with `engine.apply(job.lease, ...)`: every write is fenced by the job's
`Lease`, and once the worker gives a job up (`Job.abandoned`) its execution writes nothing
more. `InProcessExecutor` runs the Python functions of an `App` in this process;
`remote.executor.HttpExecutor` calls an Inngest SDK app over HTTP.

In process, user code does not run on the worker's own event loop: async functions run on a
`UserLoop` (one thread with its own event loop, shared by the runs, so loop-bound clients such
as a connection pool work across runs), sync functions on a thread pool. Code that blocks or
never yields stalls only user code: the worker's loop goes on leasing, renewing leases, serving
HTTP (in `stepwise dev`), enforcing attempt timeouts and handling SIGTERM. When an attempt
overruns its timeout and its code does not stop (a frozen user loop, a thread that never
returns), the executor starts a fresh loop or pool and the worker hands the other runs on the
frozen loop back; frozen threads cannot be killed, so `stuck_threads` tells `stepwise worker`
to restart the process once there are too many.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .app import App
from .engine import Engine, Lease, RunState
from .engine.outcomes import Outcome
from .execution import Execution, ExecutorEnv
from .metrics import Metrics
from .payloads import Limits

log = logging.getLogger("stepwise.worker")

#: A user loop that does not answer a ping within this many seconds is frozen.
FROZEN_AFTER_S = 1.0


@dataclass(eq=False)
class Job:
    """A run a worker leased, from its lease until its execution ends or is given up."""

    state: RunState  # what executing it needs, read by the lease (with its `Lease`)
    leased_at: float  # time.monotonic() when the lease was asked for
    lease_until: float  # time.monotonic() when the lease surely ends (renewals push it on)
    #: A step does not start once a renewal is this late (seconds): another worker may own the
    #: run by then, and may have stored the step already.
    lease_margin: float
    #: The worker gave it up (attempt timeout, shutdown): its execution writes nothing more.
    abandoned: bool = False
    task: asyncio.Task[None] | None = None  # the worker's task executing it, once started

    @property
    def run_id(self) -> str:
        return self.state.run["id"]

    @property
    def lease(self) -> Lease:
        """The take every write of this execution is fenced by."""
        if self.state.lease is None:
            raise ValueError(f"run {self.run_id} was not read by a lease")
        return self.state.lease


class Executor(Protocol):
    """Executes the runs a `Worker` leases for it; the worker renews their leases, enforces
    attempt timeouts with `expired` and gives jobs up (`Job.abandoned`, then cancels the
    task running `execute`)."""

    engine: Engine  # where outcomes go, on the worker's clock; the worker leases with it
    app_id: str

    def functions(self) -> list[str]:
        """The functions whose runs to lease."""
        ...

    async def prepare(self) -> None:
        """Before leasing: store the functions' definitions, or read them as last synced."""
        ...

    def serves(self, function_id: str) -> bool:
        """Whether a run of this function, leased earlier, can still execute here."""
        ...

    async def execute(self, job: Job) -> None:
        """Execute the run until it parks or ends, reporting outcomes with
        `engine.apply(job.lease, ...)`; raises what stopped it early (`LeaseLost`,
        `RunCancelled`, `ExecutionStopped`)."""
        ...

    def expired(self, job: Job, now: float) -> list[Outcome]:
        """The outcomes that fail the job's attempt if it overran its attempt timeout at
        time.monotonic() `now` (the worker reports them and gives the job up), else []."""
        ...

    async def timed_out(self, job: Job) -> list[Job]:
        """The worker gave `job` up for overrunning its timeout: free what its code may still
        hold; answers the other jobs that must be handed back with it."""
        ...

    @property
    def stuck_threads(self) -> int:
        """Threads still inside code given up on, which nothing can stop."""
        ...

    async def stop(self) -> None:
        """Free what executing takes (loops, pools, connections): no job runs any more."""
        ...


class UserLoop:
    """A thread running the event loop where user code executes."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def responsive(self) -> bool:
        """Whether the loop runs a callback within FROZEN_AFTER_S."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bool] = loop.create_future()

        def answer() -> None:
            if not answered.done():
                answered.set_result(True)

        try:
            self.loop.call_soon_threadsafe(loop.call_soon_threadsafe, answer)
            return await asyncio.wait_for(answered, FROZEN_AFTER_S)
        except (TimeoutError, RuntimeError):
            return False

    def retire(self) -> None:
        """Stop once the loop is free (never, if user code froze it: the thread is a daemon
        and dies with the process)."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class _Placed:
    """Where one job's code runs."""

    user_loop: UserLoop | None  # None: on the worker's loop (the test harness)
    execution: Execution | None = None  # once made, on that loop


class InProcessExecutor:
    """Runs the Python functions of an `App` in this process (see the module's docstring)."""

    def __init__(self, app: App, engine: Engine, *, concurrency: int = 10,
                 limits: Limits | None = None, isolate: bool = True) -> None:
        """`isolate=False` runs async user code on the worker's own loop (the test harness
        does, so tests can share asyncio objects with functions); nothing then protects the
        worker from code that blocks. `concurrency`: the worker's, to size the thread pool."""
        self.app = app
        self.app_id = app.id
        self.engine = engine
        self.isolate = isolate
        self._functions = list(app.functions)
        self._pool_size = concurrency * 2
        self._generation = 0
        self._running: dict[Job, _Placed] = {}
        self._user_loop: UserLoop | None = None
        #: User loops and thread pools given up because user code in them overran its
        #: attempt timeout without yielding (see `stuck_threads`).
        self._retired_loops: list[UserLoop] = []
        self._retired_pools: list[ThreadPoolExecutor] = []
        self.env = ExecutorEnv(engine=engine, limits=limits or Limits(), metrics=Metrics(),
                               inline=lambda: len(self._running) <= 1,
                               threads=self._new_pool())

    def _new_pool(self) -> ThreadPoolExecutor:
        self._generation += 1
        return ThreadPoolExecutor(max_workers=self._pool_size,
                                  thread_name_prefix=f"stepwise-sync-{self._generation}")

    def functions(self) -> list[str]:
        return self._functions

    async def prepare(self) -> None:
        """Store the app's definitions, so servers route its events; start the user loop."""
        await self.engine.register(self.app.id, [f.definition() for f in
                                                 self.app.functions.values()])
        if self.isolate and self._user_loop is None:
            self._user_loop = UserLoop(f"stepwise-user-{self._generation}")

    def serves(self, function_id: str) -> bool:
        return self.app.get(function_id) is not None

    async def execute(self, job: Job) -> None:
        """Run the function's code on the user loop (on this one, without isolation)."""
        placed = _Placed(self._user_loop)
        self._running[job] = placed
        try:
            if placed.user_loop is None:
                await self._execution(job, placed)
            else:
                await asyncio.wrap_future(placed.user_loop.submit(self._execution(job, placed)))
        finally:
            del self._running[job]

    async def _execution(self, job: Job, placed: _Placed) -> None:
        function = self.app.get(job.state.run["function_id"])
        assert function is not None  # the worker asked `serves`
        placed.execution = Execution(self.env, function, job)
        if not job.abandoned:
            await placed.execution.run()

    def expired(self, job: Job, now: float) -> list[Outcome]:
        placed = self._running.get(job)
        if placed is None or placed.execution is None:
            return []
        return placed.execution.expired(now)

    async def timed_out(self, job: Job) -> list[Job]:
        """A sync function's code may hold its pool thread for ever: new runs get a fresh
        pool (work queued on the old one still runs). Async code that froze the user loop
        stops every run on it: a fresh loop takes new runs, the others are answered."""
        placed = self._running.get(job)
        execution = placed.execution if placed is not None else None
        if placed is None or execution is None:
            return []  # it ended meanwhile: it holds nothing
        pool = execution.threads
        if pool is self.env.threads and not execution.function.is_async:
            self._retired_pools.append(pool)
            self.env.threads = self._new_pool()
            pool.shutdown(wait=False)
        frozen = placed.user_loop
        if frozen is None or frozen is not self._user_loop or await frozen.responsive():
            return []
        others = [other for other, on in self._running.items()
                  if on.user_loop is frozen and not other.abandoned]
        log.error("app %s: user code froze its event loop; starting a new one and handing "
                  "back %d other runs", self.app_id, len(others))
        self._retired_loops.append(frozen)
        self._user_loop = UserLoop(f"stepwise-user-{self._generation}")
        frozen.retire()
        return others

    @property
    def stuck_threads(self) -> int:
        """Threads still inside user code given up on (e.g. an infinite loop past its attempt
        timeout). Python cannot kill them; `stepwise worker` exits (to be restarted by its
        supervisor) when there are too many."""
        self._retired_loops = [u for u in self._retired_loops if u.thread.is_alive()]
        alive = [t for pool in self._retired_pools
                 for t in getattr(pool, "_threads", ()) if t.is_alive()]
        return len(self._retired_loops) + len(alive)

    async def stop(self) -> None:
        if self._user_loop is not None:
            self._user_loop.retire()
        self.env.threads.shutdown(wait=False, cancel_futures=True)
