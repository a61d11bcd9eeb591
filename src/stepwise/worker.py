"""The worker: leases runs through the engine, executes them in process, renews its leases.

A killed worker simply stops renewing: its leases expire and any worker takes the runs over,
replaying their stored steps (at-least-once for a step's code, exactly-once for its result).

User code does not run on the worker's own event loop: async functions run on a `UserLoop`
(one thread with its own event loop, shared by the worker's runs, so loop-bound clients such
as a connection pool work across runs), sync functions on a thread pool. Code that blocks
or never yields stalls only user code: the worker's loop goes on leasing, renewing leases,
serving HTTP (in `stepwise dev`), enforcing attempt timeouts and handling SIGTERM. When an
attempt overruns its timeout, the worker fails it, and if the user loop or a thread is frozen
it starts a fresh one and hands the other runs back; frozen threads cannot be killed, so
`stuck_threads` tells the command to restart the process once there are too many.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .app import App
from .clock import Clock
from .engine import Engine, Lease, RunState
from .engine.outcomes import Outcome
from .errors import ExecutionStopped, LeaseLost, RunCancelled
from .execution import Execution, ExecutorEnv
from .metrics import Metrics
from .payloads import Limits, new_id
from .storage import Storage

log = logging.getLogger("stepwise.worker")

#: How often the worker's loop checks attempt timeouts, in seconds.
WATCH_INTERVAL_S = 0.5
#: A user loop that does not answer a ping within this many seconds is frozen.
FROZEN_AFTER_S = 1.0
#: Executions shorter than this on average (an exponential moving average) let the worker
#: lease ahead: up to `concurrency` more runs than it has free slots, started the moment a
#: slot frees, without waiting for a lease's round trip. Long executions lease only for
#: free slots, so a busy worker never sits on runs an idle one could take.
PREFETCH_BELOW_S = 0.05
#: A run leased ahead and not started within this many seconds is handed back (executions
#: grew long meanwhile: another worker may start it sooner).
PREFETCH_HOLD_S = 2.0


def held(state: RunState) -> Lease:
    """The lease a leased run's state was read under."""
    if state.lease is None:
        raise ValueError(f"run {state.run['id']} was not read by a lease")
    return state.lease


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
class Running:
    """One execution in progress, as the worker's loop sees it."""

    run_id: str
    user_loop: UserLoop | None  # None: on the worker's loop (the test harness)
    threads: ThreadPoolExecutor
    state: RunState  # what executing it needs, read by the lease
    future: concurrent.futures.Future[None] | asyncio.Future[None] | None = None
    execution: Execution | None = None
    abandoned: bool = False
    lease_until: float = float("inf")  # time.monotonic() when our lease surely ends


@dataclass
class Prefetched:
    """A run leased ahead of a free slot (see PREFETCH_BELOW_S)."""

    state: RunState
    leased_at: float  # time.monotonic() when it was asked for
    lease_until: float  # time.monotonic() when our lease surely ends


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
        isolate: bool = True,
    ) -> None:
        """`isolate=False` runs async user code on the worker's own loop (the test harness
        does, so tests can share asyncio objects with functions); nothing then protects the
        worker from code that blocks."""
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
        self.isolate = isolate
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._functions = list(app.functions)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, Running] = {}
        self._prefetched: collections.deque[Prefetched] = collections.deque()
        #: Moving average of how long executions take (seconds): prefetch only when short.
        self._execution_s = float("inf")
        self._user_loop: UserLoop | None = None
        self._generation = 0
        #: User loops and thread pools given up because user code in them overran its
        #: attempt timeout without yielding (see `stuck_threads`).
        self._retired_loops: list[UserLoop] = []
        self._retired_pools: list[ThreadPoolExecutor] = []
        self._leasing = False
        #: Bumped whenever the worker leases or finishes work, so observers can tell that
        #: something changed while they looked away (see testing.Harness.settle).
        self.activity = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_task: asyncio.Task[None] | None = None
        self.env = ExecutorEnv(
            engine=self.engine, limits=limits or Limits(), metrics=Metrics(),
            inline=lambda: len(self._active) <= 1, threads=self._new_pool())

    def _new_pool(self) -> ThreadPoolExecutor:
        self._generation += 1
        return ThreadPoolExecutor(max_workers=self.concurrency * 2,
                                  thread_name_prefix=f"stepwise-sync-{self._generation}")

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.storage.on_new_work(self.notify)
        await self._prepare()
        await self._say_alive()
        if self.isolate:
            self._user_loop = UserLoop(f"stepwise-user-{self._generation}")
        self._lease_task = asyncio.create_task(self._lease_loop(), name="stepwise-lease")
        self._tasks = [self._lease_task,
                       asyncio.create_task(self._heartbeat_loop(), name="stepwise-heartbeat"),
                       asyncio.create_task(self._watch_loop(), name="stepwise-watchdog")]

    async def _prepare(self) -> None:
        """Before leasing: store the app's definitions, so servers route its events."""
        await self.engine.register(self.app.id, [f.definition() for f in
                                                 self.app.functions.values()])

    async def stop(self, grace: float = 5.0) -> None:
        """Stop leasing; wait up to `grace` seconds for executions, then abandon them: their
        runs are handed back at once (no waiting for a lease to expire) and user code still
        running can no longer write. Returns within about `grace` + 2 seconds, whatever user
        code does."""
        self._stopping = True
        self.notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._lease_task is not None:  # a lease on its way lands: its runs go back below
            await asyncio.wait([self._lease_task], timeout=grace)
        await self._hand_back_prefetched()
        if self._active:
            await asyncio.wait(list(self._active.values()),
                               timeout=max(0.0, deadline - loop.time()))
        log.info("worker %s: stopping; handing back %d runs", self.id, len(self._running))
        for running in list(self._running.values()):
            await self._abandon(running, [], hand_back=True)
        for task in [*self._tasks, *self._active.values()]:
            task.cancel()
        for task in [*self._tasks, *self._active.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        if self._user_loop is not None:
            self._user_loop.retire()
        self.env.threads.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):  # else its row expires with its last heartbeat
            await self.engine.goodbye(self.id)

    @property
    def stuck_threads(self) -> int:
        """Threads still inside user code the worker gave up on (e.g. an infinite loop past
        its attempt timeout). Python cannot kill them; `stepwise worker` exits (to be
        restarted by its supervisor) when there are too many."""
        self._retired_loops = [u for u in self._retired_loops if u.thread.is_alive()]
        alive = [t for pool in self._retired_pools
                 for t in getattr(pool, "_threads", ()) if t.is_alive()]
        return len(self._retired_loops) + len(alive)

    def notify(self) -> None:
        self._wake.set()

    @property
    def busy(self) -> bool:
        """True while the worker holds or is taking work (tests wait for it to be idle)."""
        return self._leasing or bool(self._active) or bool(self._prefetched)

    # --- loops -----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._start_prefetched()
            free = self.concurrency - len(self._active)
            ahead = self.concurrency if self._execution_s < PREFETCH_BELOW_S else 0
            room = free + ahead - len(self._prefetched)
            due: int | None = None
            try:
                if room > 0:
                    self._leasing = True
                    asked = time.monotonic()
                    found = await self.engine.lease_runs(self.app.id, self._functions,
                                                         self.id, room, self.lease_ms)
                    for state in found.states:
                        self._prefetched.append(Prefetched(state, asked,
                                                           asked + self.lease_seconds))
                    self._start_prefetched()
                    self.activity += 1
                    self._leasing = False
                    if len(found.states) == room:
                        continue  # there may be more waiting
                    # Slots left free: wait until something is due (with no free slot, only
                    # a finished execution, a wake, frees one).
                    due = found.next_due if found.next_due_known else \
                        await self.engine.next_due(self.app.id)
                    if due is not None and due <= self.clock.now_ms():
                        due = None  # due but held back by a concurrency limit: wait for a wake
            except Exception:
                log.exception("worker %s: leasing failed; retrying", self.id)
            finally:
                self._leasing = False
            await self.clock.wait(self._wake, None if due is None else due / 1000,
                                  self.poll_interval)

    def _start_prefetched(self) -> None:
        """Start leased runs while there are free slots."""
        while self._prefetched and len(self._active) < self.concurrency and \
                not self._stopping:
            ahead = self._prefetched.popleft()
            run_id = ahead.state.run["id"]
            self._active[run_id] = asyncio.create_task(
                self._execute(run_id, ahead.lease_until, ahead.state))

    async def _hand_back_prefetched(self, stale: float | None = None) -> None:
        """Release the runs leased ahead (those leased before `stale`, a time.monotonic()),
        for any worker to take."""
        given_up = [a for a in self._prefetched if stale is None or a.leased_at < stale]
        if not given_up:
            return
        self._prefetched = collections.deque(a for a in self._prefetched
                                             if stale is not None and a.leased_at >= stale)
        for ahead in given_up:
            try:
                await self.engine.release(held(ahead.state), 0)
            except ExecutionStopped:
                pass  # no longer ours (cancelled, or its lease expired)
            except Exception:
                log.exception("run %s: could not hand back a run leased ahead",
                              ahead.state.run["id"])

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_seconds / 3)
            mine = [r for r in self._running.values() if not r.abandoned]
            ahead = list(self._prefetched)
            if mine or ahead:
                asked = time.monotonic()
                try:
                    await self.engine.renew([held(r.state) for r in mine] +
                                            [held(a.state) for a in ahead], self.lease_ms)
                except Exception:
                    log.exception("worker %s: lease renewal failed", self.id)
                    continue
                for running in mine:
                    running.lease_until = asked + self.lease_seconds
                    if running.execution is not None:
                        running.execution.lease_until = running.lease_until
                for prefetched in ahead:
                    prefetched.lease_until = asked + self.lease_seconds
            await self._say_alive()

    async def _say_alive(self) -> None:
        """Refresh this worker's row in the workers view (live until one lease period passes
        without a heartbeat)."""
        try:
            await self.engine.heartbeat(
                {"id": self.id, "app_id": self.app.id, "host": socket.gethostname(),
                 "pid": os.getpid(), "functions": self._functions,
                 "slots": self.concurrency, "in_use": len(self._active)}, self.lease_ms)
        except Exception as exc:
            log.warning("worker %s: heartbeat not recorded: %s", self.id, exc)

    async def _watch_loop(self) -> None:
        """Attempt timeouts, enforced from the worker's loop whatever user code does."""
        while not self._stopping:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            await self._hand_back_prefetched(stale=now - PREFETCH_HOLD_S)
            for running in list(self._running.values()):
                execution = running.execution
                if running.abandoned or execution is None:
                    continue
                outcomes = execution.expired(now)
                if outcomes:
                    await self._time_out(running, outcomes)

    async def _time_out(self, running: Running, outcomes: list[Outcome]) -> None:
        """Fail the overrunning attempt; if its code does not stop (a frozen loop, a thread
        that never returns), replace the loop or pool and hand back the runs sharing it."""
        error = getattr(outcomes[0], "error", {})
        log.error("run %s: %s", running.run_id, error.get("message"))
        await self._abandon(running, outcomes, hand_back=False)
        pool = running.threads
        execution = running.execution
        if pool is self.env.threads and execution is not None and \
                not execution.function.is_async:  # a sync function holds a pool thread
            # New runs get a fresh pool; work already queued on the old one still runs.
            self._retired_pools.append(pool)
            self.env.threads = self._new_pool()
            pool.shutdown(wait=False)
        user_loop = running.user_loop
        if user_loop is not None and user_loop is self._user_loop and \
                not await user_loop.responsive():
            log.error("worker %s: user code froze its event loop; starting a new one and "
                      "handing back %d other runs", self.id, len(self._running))
            self._retired_loops.append(user_loop)
            self._user_loop = UserLoop(f"stepwise-user-{self._generation}")
            user_loop.retire()
            for other in list(self._running.values()):
                if other.user_loop is user_loop:
                    await self._abandon(other, [], hand_back=True)


    async def _abandon(self, running: Running, outcomes: list[Outcome], *,
                       hand_back: bool) -> None:
        """Give an execution up: fence it, report `outcomes` (an attempt timeout) or hand the
        run back for any worker to take at once, and cancel its code if it still listens."""
        if running.abandoned:
            return
        running.abandoned = True
        if running.execution is not None:
            running.execution.fenced = True
        try:
            if outcomes:
                await self.engine.apply(held(running.state), outcomes, last=True)
            elif hand_back:
                await self.engine.release(held(running.state), 0)
        except ExecutionStopped:
            pass  # the execution ended, or lost its lease, meanwhile
        except Exception:
            log.exception("run %s: could not report the abandoned execution", running.run_id)
        if running.future is not None:
            running.future.cancel()

    async def _execute(self, run_id: str, lease_until: float, state: RunState) -> None:
        running = Running(run_id, self._user_loop, self.env.threads, state,
                          lease_until=lease_until)
        self._running[run_id] = running
        began = time.monotonic()
        try:
            if running.user_loop is not None:
                running.future = running.user_loop.submit(self._execution(running))
                await asyncio.wrap_future(running.future)
            else:
                running.future = asyncio.ensure_future(self._execution(running))
                await running.future
        except asyncio.CancelledError:
            if not running.abandoned:
                raise
        finally:
            # A handed-back run may already execute again here: drop only our own entries.
            if self._running.get(run_id) is running:
                del self._running[run_id]
            if self._active.get(run_id) is asyncio.current_task():
                del self._active[run_id]
            took = time.monotonic() - began
            self._execution_s = took if self._execution_s == float("inf") else \
                0.8 * self._execution_s + 0.2 * took
            self._start_prefetched()
            self.activity += 1
            self.notify()

    async def _execution(self, running: Running) -> None:
        """One execution of a run (on the user loop, when there is one)."""
        run_id = running.run_id
        try:
            state = running.state
            if not self._serves(state.run["function_id"]):
                log.error("run %s: function %r is not served by this worker of app %r (it "
                          "was leased before the worker stopped serving it); releasing it "
                          "for a minute", run_id, state.run["function_id"], self.app.id)
                await self.engine.release(held(state), 60_000)
                return
            await self._execute_state(running, state)
        except LeaseLost as exc:
            log.warning("run %s: %s; this execution stops", run_id, exc)
            with contextlib.suppress(Exception, ExecutionStopped):
                await self.engine.release(held(running.state), 0)  # if it is still ours
        except RunCancelled:
            log.info("run %s was cancelled; stopped at a step boundary", run_id)
        except ExecutionStopped:
            pass
        except Exception:
            log.exception("run %s: execution failed; its lease will expire and it will be "
                          "retried", run_id)

    def _serves(self, function_id: str) -> bool:
        return self.app.get(function_id) is not None

    async def _execute_state(self, running: Running, state: RunState) -> None:
        """Run the function's Python code in process (a remote executor calls an app)."""
        function = self.app.get(state.run["function_id"])
        assert function is not None  # checked by `_serves`
        execution = Execution(self.env, function, state)
        execution.threads = running.threads
        execution.lease_until = running.lease_until
        execution.lease_margin = self.lease_seconds / 3
        running.execution = execution
        if not running.abandoned:
            await execution.run()
