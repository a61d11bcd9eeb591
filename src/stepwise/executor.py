"""Executors: what runs a leased run's code for a `Worker`, which only leases, renews leases,
heartbeats and enforces attempt timeouts (`worker.py`).

An executor executes a `Job` (a leased run) until the run parks or ends, reporting what
happened as outcomes with `engine.apply(job.lease, ...)`: every write is fenced by the job's
`Lease`, and once the worker gives a job up (`Job.abandoned`) its execution writes nothing
more. `InProcessExecutor` runs the Python functions of an `App` in this process;
`remote.executor.HttpExecutor` calls an Inngest SDK app over HTTP.

In process, user code does not run on the worker's own event loop: async functions run on a
`UserLoop` (one thread with its own event loop, shared by the runs, so loop-bound clients such
as a connection pool work across runs), sync functions on a thread pool, and plain step code
in that pool too (or in child processes, `processes.ProcessPool`, for `executor="process"`).
Code that blocks or never yields stalls only user code: the worker's loop goes on leasing,
renewing leases, serving HTTP (in `stepwise dev`), enforcing attempt timeouts and handling
SIGTERM. Async code that holds the user loop longer than `loop_stall_s` (a blocking call, a
busy loop) fails its attempt with the file and line it was stuck at, and the other runs of
that loop move to a fresh one at once. When an attempt overruns its timeout and its code does
not stop (a thread that never returns), the executor starts a fresh pool; frozen threads
cannot be killed, so `stuck_threads` tells `stepwise worker` to restart the process once there
are too many. Child processes can be killed: a process step that overruns is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from .app import App
from .context import AsyncStep, Context, SyncStep
from .engine import Engine, Lease, RunState
from .engine.outcomes import Outcome, RunFailed, StepFailed
from .errors import ErrorInfo
from .execution import ChildProcesses, Execution, ExecutorEnv
from .metrics import Metrics
from .payloads import Limits
from .processes import ProcessOptions, ProcessPool
from .threads import StepThreads

log = logging.getLogger("stepwise.worker")

#: A user loop whose last turn is older than this (seconds) is frozen.
FROZEN_AFTER_S = 1.0
#: How often a user loop notes that it had a turn (seconds).
TICK_S = 0.1
#: By default, async code that holds the user loop this long without yielding fails its
#: attempt (seconds): long enough for a slow callback, short enough that one bug does not
#: stall the other runs of the worker for minutes.
DEFAULT_LOOP_STALL_S = 5.0


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
    """A thread running the event loop where user code executes. It notes each turn it gets
    (`stalled_for`), so code that holds it is noticed, and can tell whose code that is
    (`holder`)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.last_turn = time.monotonic()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _turn(self) -> None:
        self.last_turn = time.monotonic()
        self.loop.call_later(TICK_S, self._turn)

    def stalled_for(self, now: float) -> float:
        """How long (seconds, at time.monotonic() `now`) the loop has not had a turn."""
        return max(0.0, now - self.last_turn - TICK_S)

    def holder(self) -> tuple[Execution | None, asyncio.Task[Any] | None]:
        """The execution whose code holds the loop now, and the task running it, read from
        another thread while the loop is stuck: the innermost frame of the loop's thread that
        holds an execution, its context or its step tools (a function body, a step, a branch
        of `parallel`, and what they call, all do)."""
        task = asyncio.current_task(self.loop)
        frame = sys._current_frames().get(self.thread.ident or -1)
        while frame is not None:
            for value in list(frame.f_locals.values()):
                found = _execution_of(value)
                if found is not None:
                    return found, task
            frame = frame.f_back
        return None, task

    def stack(self) -> list[traceback.FrameSummary]:
        """Where the loop's thread is now, outermost frame first."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        return traceback.extract_stack(frame) if frame is not None else []

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._turn)
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

    def retire(self) -> None:
        """Stop once the loop is free (never, if user code froze it: the thread is a daemon
        and dies with the process)."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class _Placed:
    """Where one job's code runs."""

    user_loop: UserLoop | None  # None: on the worker's loop (sync functions, the test harness)
    execution: Execution | None = None  # once made, on that loop


class InProcessExecutor:
    """Runs the Python functions of an `App` in this process (see the module's docstring)."""

    def __init__(self, app: App, engine: Engine, *, concurrency: int = 10,
                 limits: Limits | None = None, isolate: bool = True,
                 loop_stall_s: float = DEFAULT_LOOP_STALL_S,
                 processes: ProcessOptions | None = None) -> None:
        """`isolate=False` runs async user code on the worker's own loop (the test harness
        does, so tests can share asyncio objects with functions); nothing then protects the
        worker from code that blocks. `concurrency`: the worker's, to size the thread pool.
        `loop_stall_s`: async code holding the user loop longer fails its attempt.
        `processes`: the pool for `executor="process"` step code (default: one child per
        core, started on first use)."""
        if loop_stall_s <= 0:
            raise ValueError("loop_stall_s must be positive")
        self.app = app
        self.app_id = app.id
        self.engine = engine
        self.isolate = isolate
        self.loop_stall_s = loop_stall_s
        self.process_options = processes or ProcessOptions()
        self._functions = list(app.functions)
        self._pool_size = concurrency * 2
        self._generation = 0
        self._running: dict[Job, _Placed] = {}
        self._user_loop: UserLoop | None = None
        self._home: asyncio.AbstractEventLoop | None = None  # the worker's loop
        self._processes: ProcessPool | None = None
        self._child_processes: ChildProcesses | None = None  # the pool, as executions use it
        #: User loops and thread pools given up because user code in them overran its
        #: attempt timeout without yielding (see `stuck_threads`).
        self._retired_loops: list[UserLoop] = []
        self._retired_pools: list[StepThreads] = []
        self.env = ExecutorEnv(engine=engine, limits=limits or Limits(), metrics=Metrics(),
                               inline=lambda: len(self._running) <= 1,
                               threads=self._new_pool(), processes=self._process_pool)

    def _new_pool(self) -> StepThreads:
        self._generation += 1
        return StepThreads(self._pool_size, f"stepwise-sync-{self._generation}")

    def _process_pool(self) -> ChildProcesses:
        """The child processes, started on first use; used from the worker's loop whatever
        loop the step runs on (`_HomePool`)."""
        if self._child_processes is None:  # (after `prepare`, which knows the home loop)
            self._processes = ProcessPool(self.process_options)
            self._child_processes = self._processes if self._home is None else \
                _HomePool(self._processes, self._home)
        return self._child_processes

    def functions(self) -> list[str]:
        return self._functions

    async def prepare(self) -> None:
        """Store the app's definitions, so servers route its events; start the user loop."""
        self._home = asyncio.get_running_loop()
        await self.engine.register(self.app.id, [f.definition() for f in
                                                 self.app.functions.values()])
        if self.isolate and self._user_loop is None:
            self._user_loop = UserLoop(f"stepwise-user-{self._generation}")

    def serves(self, function_id: str) -> bool:
        return self.app.get(function_id) is not None

    async def execute(self, job: Job) -> None:
        """Run an async function's code on the user loop, a sync one's from this loop (its
        code runs in a thread); without isolation, all on this loop."""
        function = self.app.get(job.state.run["function_id"])
        assert function is not None  # the worker asked `serves`
        placed = _Placed(self._user_loop if function.is_async else None)
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
        assert function is not None
        placed.execution = Execution(self.env, function, job)
        if not job.abandoned:
            await placed.execution.run()

    def expired(self, job: Job, now: float) -> list[Outcome]:
        placed = self._running.get(job)
        if placed is None or placed.execution is None:
            return []
        user_loop = placed.user_loop
        if user_loop is not None and user_loop is self._user_loop and \
                user_loop.stalled_for(now) > self.loop_stall_s:
            holder, task = user_loop.holder()
            alone = [j for j, on in self._running.items() if on.user_loop is user_loop] == [job]
            if holder is placed.execution or (holder is None and alone):
                return self._stalled(placed.execution, task, user_loop, now)
        return placed.execution.expired(now)

    def _stalled(self, execution: Execution, task: asyncio.Task[Any] | None, user_loop: UserLoop,
                 now: float) -> list[Outcome]:
        """Fail the attempt whose code holds the user loop, naming where it is stuck."""
        frames = [f for f in user_loop.stack() if not _internal(f.filename)]
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames \
            else "an unknown place"
        held = user_loop.stalled_for(now)
        error = ErrorInfo(name="LoopStalled", stack="".join(traceback.format_list(frames)),
                          message=(
            f"function {execution.function.id!r} held its event loop for {held:.1f} s "
            f"without yielding, at {where}; every run on that loop waited meanwhile. In an "
            "async function, await instead of blocking, or put blocking or CPU-bound code in "
            "a plain (def) step, which runs in a thread (executor=\"process\": a process). "
            f"The bound is the worker's loop_stall_s ({self.loop_stall_s:g} s)."))
        ended = execution.now_ms()
        steps = [c for c in list(execution.calls.values()) if task is not None and c.task is task]
        if steps:
            return [StepFailed(c.sid, c.seq, ErrorInfo(**error, step_id=c.sid), c.started,
                               ended, c.attempt, retriable=True, retries=c.retries)
                    for c in steps]
        return [RunFailed(error)]

    async def timed_out(self, job: Job) -> list[Job]:
        """Code in a thread may hold it for ever: new runs get a fresh pool (work queued on
        the old one still runs). Async code that froze the user loop stops every run on it:
        a fresh loop takes new runs, the others are answered."""
        placed = self._running.get(job)
        execution = placed.execution if placed is not None else None
        if placed is None or execution is None:
            return []  # it ended meanwhile: it holds nothing
        if not execution.function.is_async or execution.threaded:
            pool = self.env.threads
            self._retired_pools.append(pool)
            self.env.threads = self._new_pool()
            pool.shutdown()
        frozen = placed.user_loop
        if frozen is None or frozen is not self._user_loop or frozen.stalled_for(
                time.monotonic()) < min(FROZEN_AFTER_S, self.loop_stall_s):
            return []
        others = [other for other, on in self._running.items()
                  if on.user_loop is frozen and not other.abandoned and other is not job]
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
        self._retired_pools = [pool for pool in self._retired_pools if pool.alive]
        return len(self._retired_loops) + sum(pool.alive for pool in self._retired_pools)

    async def stop(self) -> None:
        if self._user_loop is not None:
            self._user_loop.retire()
        self.env.threads.shutdown(cancel_queued=True)
        if self._processes is not None:
            await self._processes.close()


_STEPWISE_DIR = os.path.dirname(os.path.abspath(__file__))
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))


def _execution_of(value: object) -> Execution | None:
    """The execution behind a frame's local: itself, a `Context`, or its step tools."""
    if isinstance(value, Execution):
        return value
    if isinstance(value, Context):
        value = value.step
    found = getattr(value, "_ex", None) if isinstance(value, AsyncStep | SyncStep) else None
    return found if isinstance(found, Execution) else None


def _internal(filename: str) -> bool:
    """Frames of stepwise, asyncio and threading: not where user code is stuck."""
    path = os.path.abspath(filename)
    return path.startswith((_STEPWISE_DIR + os.sep, _ASYNCIO_DIR + os.sep)) or \
        os.path.basename(path) == "threading.py"


class _HomePool:
    """A `ProcessPool` used from any loop: its calls run on the loop it belongs to (the
    worker's); cancelling the caller cancels the call there (which kills the child)."""

    def __init__(self, pool: ProcessPool, home: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._home = home

    async def run(self, fn: Callable[..., Any], args_json: str, kwargs_json: str, what: str,
                  limit: int) -> str:
        if asyncio.get_running_loop() is self._home:
            return await self._pool.run(fn, args_json, kwargs_json, what, limit)
        future = asyncio.run_coroutine_threadsafe(
            self._pool.run(fn, args_json, kwargs_json, what, limit), self._home)
        return await asyncio.wrap_future(future)
