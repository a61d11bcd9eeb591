"""The worker: leases runs through the engine for its executor (`executor.py`), renews their
leases, heartbeats and enforces attempt timeouts; the executor runs the code.

A killed worker simply stops renewing: its leases expire and any worker takes the runs over,
replaying their stored steps (at-least-once for a step's code, exactly-once for its result).
Everything here runs on the worker's own event loop, which user code never blocks (see
`executor.InProcessExecutor`), so leases are renewed, attempt timeouts enforced and SIGTERM
handled whatever the code does. An execution the worker gives up (attempt timeout, shutdown)
is fenced (`Job.abandoned`), its run failed or handed back through the engine, and its task
cancelled.

A dedicated worker serves some of its executor's functions only (`functions`, `exclude`): it
leases and announces only those, so other workers (or none, which the workers view shows) take
the rest. `function_concurrency` caps how many runs of a function it holds at once (a model
loaded once per process).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Collection, Mapping, Sequence

from .app import App
from .clock import Clock
from .engine import Engine
from .engine.leasing import Leased
from .engine.outcomes import Outcome
from .errors import ExecutionStopped, LeaseLost, RunCancelled
from .executor import DEFAULT_LOOP_STALL_S, Executor, InProcessExecutor, Job
from .payloads import Limits, new_id
from .processes import ProcessOptions
from .storage import Storage

log = logging.getLogger("stepwise.worker")

#: How often the worker's loop checks attempt timeouts, in seconds.
WATCH_INTERVAL_S = 0.5
#: Executions shorter than this on average (an exponential moving average) let the worker
#: lease ahead: up to `concurrency` more runs than it has free slots, started the moment a
#: slot frees, without waiting for a lease's round trip. Long executions lease only for
#: free slots, so a busy worker never sits on runs an idle one could take.
PREFETCH_BELOW_S = 0.05
#: A run leased ahead and not started within this many seconds is handed back (executions
#: grew long meanwhile: another worker may start it sooner).
PREFETCH_HOLD_S = 2.0


class FunctionSelectionError(ValueError):
    """A worker's `functions`, `exclude` or `function_concurrency` (named by `option`) does not
    fit its executor's functions; `detail` says why."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option}: {detail}")
        self.option = option
        self.detail = detail


def select_functions(app_id: str, available: Sequence[str], *,
                     functions: Collection[str] | None = None, exclude: Collection[str] = (),
                     function_concurrency: Mapping[str, int] | None = None) -> list[str]:
    """The functions a worker serves, in `available`'s order: those of `available` (its
    executor's), only `functions` when given, minus `exclude`. Raises FunctionSelectionError
    for ids `available` lacks (in any of the three), a limit below 1 or for a function not
    served, and when nothing is left to serve."""
    limits = dict(function_concurrency or {})
    for option, ids in (("functions", functions), ("exclude", exclude)):
        if isinstance(ids, str):
            raise TypeError(f"{option}: a collection of function ids, not one string")
    known = set(available)
    listing = ", ".join(available) or "none"
    for option, ids in (("functions", functions or ()), ("exclude", exclude),
                        ("function_concurrency", limits)):
        unknown = sorted({i for i in ids if i not in known})
        if unknown:
            raise FunctionSelectionError(option, (
                f"unknown function{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} (app {app_id!r} has: {listing})"))
    if functions is not None and not functions:
        raise FunctionSelectionError("functions", "names no function: the worker would serve "
                                                  "nothing")
    chosen = known if functions is None else set(functions)
    served = [f for f in available if f in chosen and f not in exclude]
    if not served:
        whose = f"of app {app_id!r}" if functions is None else "given to serve"
        raise FunctionSelectionError("exclude", (
            f"excludes every function {whose} ({', '.join(sorted(chosen))}): the worker "
            "would serve nothing"))
    for function_id, limit in limits.items():
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise FunctionSelectionError("function_concurrency", (
                f"{function_id}={limit!r}: a limit must be a positive integer"))
        if function_id not in served:
            raise FunctionSelectionError("function_concurrency", (
                f"{function_id!r} is not served by this worker (serves: {', '.join(served)})"))
    return served


class Worker:
    """Leases runs for its executor and holds them: renews their leases, heartbeats, gives up
    executions that overrun their attempt timeout, and hands runs back when it stops."""

    def __init__(
        self,
        executor: Executor | App,
        storage: Storage,
        *,
        clock: Clock | None = None,
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        limits: Limits | None = None,
        isolate: bool = True,
        functions: Collection[str] | None = None,
        exclude: Collection[str] = (),
        function_concurrency: Mapping[str, int] | None = None,
        loop_stall_s: float = DEFAULT_LOOP_STALL_S,
        processes: ProcessOptions | None = None,
    ) -> None:
        """An `App` gets an `InProcessExecutor` (on an engine with `clock`, with `limits`,
        `isolate`, `loop_stall_s` and `processes`: see there); another executor brings its
        engine, which the worker leases with.

        The worker serves the executor's functions, only `functions` when given, minus
        `exclude`; and holds (executing, or leased ahead) at most `function_concurrency[id]`
        runs of a function at once. Ids are checked against the executor's functions as it
        lists them now (an App's: all of them); a ValueError (`FunctionSelectionError`) names
        what does not fit. Without any of the three it serves whatever the executor lists at
        each lease."""
        if concurrency < 1:
            raise ValueError("worker concurrency must be at least 1")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        if isinstance(executor, App):
            executor = InProcessExecutor(executor, Engine(storage, clock),
                                         concurrency=concurrency, limits=limits,
                                         isolate=isolate, loop_stall_s=loop_stall_s,
                                         processes=processes)
        elif clock is not None or limits is not None or not isolate or processes is not None \
                or loop_stall_s != DEFAULT_LOOP_STALL_S:
            raise ValueError("clock, limits, isolate, loop_stall_s and processes are for an "
                             "App's in-process executor; an executor brings its own")
        #: The functions served, when chosen (else: every one the executor lists), and the
        #: per-function limits; without limits one lease per loop takes them all.
        self._served: list[str] | None = None
        self._served_set: frozenset[str] | None = None
        self._limits: dict[str, int] = {}
        self._unlimited: list[str] = []
        if functions is not None or exclude or function_concurrency:
            self._served = select_functions(executor.app_id, executor.functions(),
                                            functions=functions, exclude=exclude,
                                            function_concurrency=function_concurrency)
            self._served_set = frozenset(self._served)
            self._limits = dict(function_concurrency or {})
            self._unlimited = [f for f in self._served if f not in self._limits]
        self.executor = executor
        self.storage = storage
        self.engine = executor.engine
        self.clock = self.engine.clock
        self.concurrency = concurrency
        self.lease_ms = int(lease_seconds * 1000)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._jobs: dict[str, Job] = {}  # executing, by run
        self._prefetched: collections.deque[Job] = collections.deque()
        #: Moving average of how long executions take (seconds): prefetch only when short.
        self._execution_s = float("inf")
        self._leasing = False
        #: Bumped whenever the worker leases or finishes work, so observers can tell that
        #: something changed while they looked away (see testing.Harness.settle).
        self.activity = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.storage.on_new_work(self.notify)
        await self.executor.prepare()
        await self._say_alive()
        self._lease_task = asyncio.create_task(self._lease_loop(), name="stepwise-lease")
        self._tasks = [self._lease_task,
                       asyncio.create_task(self._heartbeat_loop(), name="stepwise-heartbeat"),
                       asyncio.create_task(self._watch_loop(), name="stepwise-watchdog")]

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
        if self._jobs:
            await asyncio.wait(self._job_tasks(), timeout=max(0.0, deadline - loop.time()))
        log.info("worker %s: stopping; handing back %d runs", self.id, len(self._jobs))
        for job in list(self._jobs.values()):
            await self._abandon(job, [], hand_back=True)
        tasks = [*self._tasks, *self._job_tasks()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        await self.executor.stop()
        with contextlib.suppress(Exception):  # else its row expires with its last heartbeat
            await self.engine.goodbye(self.id)

    def _job_tasks(self) -> list[asyncio.Task[None]]:
        return [job.task for job in self._jobs.values() if job.task is not None]

    @property
    def stuck_threads(self) -> int:
        """Threads still inside code the executor gave up on (e.g. an infinite loop past its
        attempt timeout); `stepwise worker` exits (to be restarted) when there are too many."""
        return self.executor.stuck_threads

    def notify(self) -> None:
        self._wake.set()

    @property
    def functions(self) -> list[str]:
        """The functions whose runs this worker leases (and announces in its heartbeat)."""
        return self._served or self.executor.functions()

    @property
    def function_concurrency(self) -> dict[str, int]:
        """Per function, how many of its runs the worker holds at most at once."""
        return dict(self._limits)

    @property
    def busy(self) -> bool:
        """True while the worker holds or is taking work (tests wait for it to be idle)."""
        return self._leasing or bool(self._jobs) or bool(self._prefetched)

    # --- leasing ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._start_prefetched()
            free = self.concurrency - len(self._jobs)
            ahead = self.concurrency if self._execution_s < PREFETCH_BELOW_S else 0
            room = free + ahead - len(self._prefetched)
            due: int | None = None
            try:
                if room > 0:
                    self._leasing = True
                    asked = time.monotonic()
                    found: Leased | None
                    if self._limits:
                        found, filled = await self._lease_limited(room, asked)
                    else:  # the common case: one lease
                        found = await self.engine.lease_runs(
                            self.executor.app_id, self.functions, self.id, room, self.lease_ms)
                        self._hold(found, asked)
                        filled = len(found.states) == room
                    self._start_prefetched()
                    self.activity += 1
                    self._leasing = False
                    if filled:
                        continue  # there may be more waiting
                    # Slots left free: wait until something is due (with no free slot, only
                    # a finished execution, a wake, frees one). No lease (every function at
                    # its limit): wait for one to finish.
                    if found is not None:
                        due = found.next_due if found.next_due_known else \
                            await self.engine.next_due(self.executor.app_id)
                    if due is not None and due <= self.clock.now_ms():
                        # Due but held back (a concurrency limit; a function this worker
                        # does not serve): wait for a wake, or poll.
                        due = None
            except Exception:
                log.exception("worker %s: leasing failed; retrying", self.id)
            finally:
                self._leasing = False
            await self.clock.wait(self._wake, None if due is None else due / 1000,
                                  self.poll_interval)

    def _hold(self, found: Leased, asked: float) -> None:
        for state in found.states:
            self._prefetched.append(Job(state, asked, asked + self.lease_seconds,
                                        self.lease_seconds / 3))

    async def _lease_limited(self, room: int, asked: float) -> tuple[Leased | None, bool]:
        """Lease up to `room` runs, at most `function_concurrency[id]` held of a function:
        each limited function below its limit alone first, then the others together with the
        room left (limited first, so a backlog of the others cannot keep them waiting; they
        take at most their limits). Answers the last lease (None: none asked) and whether
        the room was filled."""
        held = collections.Counter(job.state.run["function_id"]
                                   for job in (*self._jobs.values(), *self._prefetched))
        app_id = self.executor.app_id
        left = room
        found: Leased | None = None
        for function_id, limit in self._limits.items():
            want = min(left, limit - held[function_id])
            if want <= 0:
                continue
            found = await self.engine.lease_runs(app_id, [function_id], self.id, want,
                                                 self.lease_ms)
            self._hold(found, asked)
            left -= len(found.states)
        if left > 0 and self._unlimited:
            found = await self.engine.lease_runs(app_id, self._unlimited, self.id, left,
                                                 self.lease_ms)
            self._hold(found, asked)
            left -= len(found.states)
        return found, left == 0

    def _start_prefetched(self) -> None:
        """Start leased runs while there are free slots."""
        while self._prefetched and len(self._jobs) < self.concurrency and not self._stopping:
            job = self._prefetched.popleft()
            self._jobs[job.run_id] = job
            job.task = asyncio.create_task(self._execute(job))

    async def _hand_back_prefetched(self, stale: float | None = None) -> None:
        """Release the runs leased ahead (those leased before `stale`, a time.monotonic()),
        for any worker to take."""
        given_up = [j for j in self._prefetched if stale is None or j.leased_at < stale]
        if not given_up:
            return
        self._prefetched = collections.deque(j for j in self._prefetched
                                             if stale is not None and j.leased_at >= stale)
        for job in given_up:
            try:
                await self.engine.release(job.lease, 0)
            except ExecutionStopped:
                pass  # no longer ours (cancelled, or its lease expired)
            except Exception:
                log.exception("run %s: could not hand back a run leased ahead", job.run_id)

    # --- heartbeats and the watchdog -------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_seconds / 3)
            held = [j for j in [*self._jobs.values(), *self._prefetched] if not j.abandoned]
            if held:
                asked = time.monotonic()
                try:
                    await self.engine.renew([j.lease for j in held], self.lease_ms)
                except Exception:
                    log.exception("worker %s: lease renewal failed", self.id)
                    continue
                for job in held:
                    job.lease_until = asked + self.lease_seconds
            await self._say_alive()

    async def _say_alive(self) -> None:
        """Refresh this worker's row in the workers view (live until one lease period passes
        without a heartbeat)."""
        try:
            await self.engine.heartbeat(
                {"id": self.id, "app_id": self.executor.app_id, "host": socket.gethostname(),
                 "pid": os.getpid(), "functions": self.functions,
                 "slots": self.concurrency, "in_use": len(self._jobs)}, self.lease_ms)
        except Exception as exc:
            log.warning("worker %s: heartbeat not recorded: %s", self.id, exc)

    async def _watch_loop(self) -> None:
        """Attempt timeouts, enforced from the worker's loop whatever user code does."""
        while not self._stopping:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            await self._hand_back_prefetched(stale=now - PREFETCH_HOLD_S)
            for job in list(self._jobs.values()):
                outcomes = [] if job.abandoned else self.executor.expired(job, now)
                if outcomes:
                    await self._time_out(job, outcomes)

    async def _time_out(self, job: Job, outcomes: list[Outcome]) -> None:
        """Fail the overrunning attempt; the executor frees what its code still holds, and
        the runs stopped with it (on a frozen loop) are handed back."""
        error = getattr(outcomes[0], "error", {})
        log.error("run %s: %s", job.run_id, error.get("message"))
        await self._abandon(job, outcomes, hand_back=False)
        for other in await self.executor.timed_out(job):
            await self._abandon(other, [], hand_back=True)

    async def _abandon(self, job: Job, outcomes: list[Outcome], *, hand_back: bool) -> None:
        """Give an execution up: fence it, report `outcomes` (an attempt timeout) or hand the
        run back for any worker to take at once, and cancel its task (and so its code, if it
        still listens)."""
        if job.abandoned:
            return
        job.abandoned = True
        try:
            if outcomes:
                await self.engine.apply(job.lease, outcomes, last=True)
            elif hand_back:
                await self.engine.release(job.lease, 0)
        except ExecutionStopped:
            pass  # the execution ended, or lost its lease, meanwhile
        except Exception:
            log.exception("run %s: could not report the abandoned execution", job.run_id)
        if job.task is not None:
            job.task.cancel()

    # --- executions ------------------------------------------------------------------------

    async def _execute(self, job: Job) -> None:
        began = time.monotonic()
        try:
            await self._execution(job)
        except asyncio.CancelledError:
            if not job.abandoned:
                raise
        finally:
            # A handed-back run may already execute again here: drop only our own entry.
            if self._jobs.get(job.run_id) is job:
                del self._jobs[job.run_id]
            took = time.monotonic() - began
            self._execution_s = took if self._execution_s == float("inf") else \
                0.8 * self._execution_s + 0.2 * took
            self._start_prefetched()
            self.activity += 1
            self.notify()

    async def _execution(self, job: Job) -> None:
        """One execution of a run by the executor, and what stopped it early."""
        run_id = job.run_id
        try:
            function_id = job.state.run["function_id"]
            if self._served_set is not None and function_id not in self._served_set:
                log.error("run %s: function %r is not among the functions this worker "
                          "serves (%s); handing it back", run_id, function_id,
                          ", ".join(self.functions))
                await self.engine.release(job.lease, 0)  # for a worker that serves it
                return
            if not self.executor.serves(function_id):
                log.error("run %s: function %r is not served by this worker of app %r (it "
                          "was leased before the worker stopped serving it); releasing it "
                          "for a minute", run_id, function_id, self.executor.app_id)
                await self.engine.release(job.lease, 60_000)
                return
            await self.executor.execute(job)
        except LeaseLost as exc:
            log.warning("run %s: %s; this execution stops", run_id, exc)
            with contextlib.suppress(Exception, ExecutionStopped):
                await self.engine.release(job.lease, 0)  # if it is still ours
        except RunCancelled:
            log.info("run %s was cancelled; stopped at a step boundary", run_id)
        except ExecutionStopped:
            pass
        except Exception:
            log.exception("run %s: execution failed; its lease will expire and it will be "
                          "retried", run_id)
