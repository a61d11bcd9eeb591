"""The in-process executor: one execution of a run's Python code, reported as outcomes.

It replays stored steps (memoized results), runs new ones, and reports each as an outcome
(`engine.outcomes`): a finished step at once, so the code goes on with its stored result; a
sleep, wait or invoke when the branches of the code have settled, together, with the end of
the execution. The engine decides the rest (retries, parking, expiry). What this executor
knows that no engine can is the code's step order, so the non-determinism check lives here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from . import expressions, results, tracing
from .context import CURRENT_STEP, Context
from .engine import Engine, RunState
from .engine.outcomes import (
    Applied,
    EventsSent,
    Invoke,
    Logged,
    LogLine,
    Outcome,
    RunCompleted,
    RunFailed,
    SleepUntil,
    StepCompleted,
    StepFailed,
    WaitForEvent,
)
from .engine.waits import event_json, match_of
from .errors import (
    ErrorInfo,
    ExecutionStopped,
    LeaseLost,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepOutputError,
    StorageLost,
    describe_exception,
)
from .events import Event, StoredEvent, coerce_events
from .metrics import Metrics
from .payloads import Limits, PayloadError, PayloadTooLarge, dumps, loads, unstorable
from .processes import ChildRaised, run_to_end
from .status import RunStatus, StepStatus
from .storage import StorageUnavailable
from .storage.rows import StepRow
from .threads import StepThreads

if TYPE_CHECKING:
    from .app import Function

log = logging.getLogger("stepwise.worker")
#: Log lines buffered per execution before they reach the engine (which keeps 1,000 per run).
MAX_BUFFERED_LOG_LINES = 1001
T = TypeVar("T")
MAX_STEP_ID = 512


class ChildProcesses(Protocol):
    """Where `executor="process"` step code runs (`processes.ProcessPool`)."""

    async def run(self, fn: Callable[..., Any], args_json: str, kwargs_json: str, what: str,
                  limit: int) -> str: ...


@dataclass
class ExecutorEnv:
    """What an execution needs from its surroundings (its executor provides it)."""

    engine: Engine  # and its clock, the one time every outcome is stamped with
    limits: Limits
    metrics: Metrics
    threads: StepThreads  # where sync functions and plain step code run
    #: The child processes where the step code of `executor="process"` runs (started on
    #: first use).
    processes: Callable[[], ChildProcesses]
    inline: Callable[[], bool] = lambda: False  # commit on the loop (one run executing)


class Hold(Protocol):
    """A worker's hold on the run an execution runs (an `executor.Job`), read as it changes."""

    state: RunState  # the run as its lease read it, with the `Lease` every write is fenced by
    lease_until: float  # time.monotonic() when the lease surely ends (renewals push it on)
    lease_margin: float  # no step starts once a renewal is this late: the run may be taken
    abandoned: bool  # the worker gave the execution up: it must write nothing more


class Suspend(ExecutionStopped):
    """This branch of the code must wait (a retry, a sleep, a wait, an invoke)."""


class Abandoned(ExecutionStopped):
    """The worker gave this execution up (attempt timeout, shutdown): it must write nothing."""


class RunFailure(ExecutionStopped):
    """Fail the run at once with `error`, whatever user code catches."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.get("message"))
        self.error = error


def to_ms(value: datetime | timedelta, now_ms: int, what: str) -> int:
    if isinstance(value, timedelta):
        return now_ms + int(value.total_seconds() * 1000)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError(f"{what}: use a timezone-aware datetime (e.g. tzinfo=UTC)")
        return int(value.timestamp() * 1000)
    raise TypeError(f"{what}: expected a timedelta or datetime, got {type(value).__name__}")


@dataclass
class StepCall:
    """A `step.run` that must execute its function (not memoized)."""

    sid: str
    seq: int
    attempt: int
    started: int
    retries: int | None
    kind: Any = None  # the declared result type (`results`), None: the stored JSON
    began: float = 0.0  # time.monotonic(): attempt timeouts count real time, not engine time
    span: Any = None  # the attempt's trace span, when tracing is on
    where: str = "thread"  # where its code runs: "loop" (a coroutine), "thread" or "process"
    task: asyncio.Task[Any] | None = None  # the task running its code on a loop, if any


def is_coroutine_function(fn: object) -> bool:
    """Whether calling `fn` makes a coroutine (an `async def`, a partial of one, or an object
    whose `__call__` is one): such step code runs on the loop, any other in a thread."""
    call = None if inspect.isroutine(fn) else type(fn).__dict__.get("__call__")
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


class Execution:
    def __init__(self, env: ExecutorEnv, function: Function, job: Hold) -> None:
        self.env = env
        self.function = function
        #: The worker's hold on the run: its lease's end, and whether it gave the run up.
        self.job = job
        state = job.state
        self.run_id: str = state.run["id"]
        if state.lease is None:
            raise ValueError(f"run {self.run_id}: an execution needs the lease it runs under")
        #: The take this execution runs under: every outcome is written with it (fencing).
        self.lease = state.lease
        self.created_at: int = state.run["created_at"]
        self.loop = asyncio.get_running_loop()
        self.stored = state.steps
        self.stored_by_seq = {row["seq"]: sid for sid, row in state.steps.items()}
        #: Sleeps, waits and invokes met by the code: reported together when it settles.
        self.pending: list[Outcome] = []
        #: A branch must wait: outside parallel branches, start nothing new.
        self.stopping = False
        self._seen: dict[str, int] = {}
        self._position = 0
        self._parallel = 0
        self._claims = threading.Lock()
        self._inflight = 0
        self._settled = asyncio.Event()
        self._settled.set()
        #: Watched from the worker's own loop (see `expired`): step attempts running now, and
        #: since when the body code has run without a step finishing.
        self.calls: dict[str, StepCall] = {}
        self.body_since = time.monotonic()
        self.timeout_s = function.attempt_timeout_ms / 1000
        #: Tracing (`stepwise.tracing`): this execution's span, the stored context of the run's
        #: event, and why the run failed, if it did.
        self.span: Any = None
        self.trace = state.event.get("trace") if state.event is not None else None
        self.failure: str | None = None
        #: ctx.logger lines not yet reported (they go with the next outcome).
        self.log_lines: list[LogLine] = []
        #: A completed step not stored yet (`end_step`), and its write when under way.
        self.unsaved: StepCompleted | None = None
        self._saving: asyncio.Task[None] | None = None
        #: Where sync code runs (the pool when it started: its executor swaps in a fresh one when
        #: code holds a thread past its attempt timeout).
        self.threads = env.threads
        #: Step attempts whose code runs in a thread now (a thread the executor may have to
        #: give up on, if the attempt overruns its timeout).
        self.threaded = 0
        self.event_json: dict[str, Any] | None = None
        event = None
        if state.event is not None:
            self.event_json = event_json(state.event)
            event = Event(**self.event_json)
        self.ctx = Context(self, event, self.run_id, function.id, state.run["retry"],
                           state.origin_error, function.is_async)
        if state.batch:
            self.ctx.events = [Event(**event_json(e)) for e in state.batch]

    @property
    def replaying(self) -> bool:
        return self._position < len(self.stored)

    def now_ms(self) -> int:
        return self.env.engine.clock.now_ms()

    def call(self, coro: Awaitable[T]) -> T:
        """From a sync function's thread, run a coroutine on the worker's loop and wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    async def report(self, outcome: Outcome) -> Applied:
        """Report a finished step now (after the one not stored yet); the code goes on with
        what the engine stored."""
        await self.saved()
        try:
            return await self._apply(outcome)
        except StorageUnavailable as exc:
            raise StorageLost(f"run {self.run_id}: {exc}") from exc

    def _apply(self, outcome: Outcome) -> Awaitable[Applied]:
        if self.job.abandoned:
            raise Abandoned(self.run_id)
        return self.env.engine.apply(self.lease,
                                     [*self.take_log(), outcome] if self.log_lines else [outcome],
                                     last=False, inline=self.env.inline())

    # --- write-behind of a completed step ---------------------------------------------------
    # An async body's completed step is stored before the next step starts, at the next
    # outcome, or with the run's end, whichever comes first; and in the background as soon as
    # the code awaits anything else. A run whose last step is followed by its end stores both
    # in one transaction instead of two. A crash before it is stored runs the step again, as a
    # crash during the step would; no later step starts before it is stored.

    def _may_defer(self) -> bool:
        return self.function.is_async and self._parallel == 0 and not self.stopping

    def _save_soon(self) -> None:
        """The code awaited something (the loop got a turn): store the step now."""
        if self.unsaved is not None and self._saving is None:
            task = self._saving = self.loop.create_task(self._save())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen by `saved`

    async def _save(self) -> None:
        outcome, self.unsaved = self.unsaved, None
        if outcome is None:
            return
        try:
            applied = await self._apply(outcome)
        except StorageUnavailable as exc:
            raise StorageLost(f"run {self.run_id}: {exc}") from exc
        if applied.outputs.get(outcome.step_id) != outcome.output:
            # Stored first by another execution: what this one did since used another result.
            raise LeaseLost(f"run {self.run_id}: step {outcome.step_id!r} was stored by "
                            "another execution")

    async def saved(self) -> None:
        """Return once the completed step not stored yet (if any) is stored."""
        task = self._saving
        if task is None:
            if self.unsaved is None:
                return
            task = self._saving = self.loop.create_task(self._save())
        try:
            await task
        finally:
            if self._saving is task:
                self._saving = None

    def keep_log(self, level: int, message: str) -> None:
        """A ctx.logger line (not called while replaying: each line is kept once)."""
        if len(self.log_lines) < MAX_BUFFERED_LOG_LINES:
            self.log_lines.append(LogLine(self.now_ms(), logging.getLevelName(level),
                                          CURRENT_STEP.get(), message))

    def take_log(self) -> list[Outcome]:
        lines, self.log_lines = self.log_lines, []
        return [Logged(tuple(lines))] if lines else []

    # --- step bookkeeping ----------------------------------------------------------------

    def claim(self, step_id: str) -> tuple[str, int, StepRow | None]:
        """Give this call its unique step id and position; check it against the stored history."""
        if not isinstance(step_id, str) or not step_id or len(step_id) > MAX_STEP_ID \
                or unstorable(step_id):
            raise TypeError(f"a step id must be a non-empty string of at most {MAX_STEP_ID} "
                            f"characters without U+0000 or lone surrogates, got {step_id!r}")
        with self._claims:
            if self.stopping and self._parallel == 0:
                raise Suspend()  # the run is parking: start nothing new
            n = self._seen.get(step_id, 0)
            self._seen[step_id] = n + 1
            sid = step_id if n == 0 else f"{step_id}:{n}"
            seq = self._position
            self._position += 1
            expected = self.stored_by_seq.get(seq)
        if self._parallel == 0 and expected is not None and expected != sid:
            raise RunFailure(describe_exception(NonDeterminismError(
                f"step #{seq + 1} is {sid!r} in the code but {expected!r} in the run's history: "
                "the function's steps changed since the run started. Replay cannot continue "
                "safely; start a new run or restore the old code.")))
        return sid, seq, self.stored.get(sid)

    def memoized(self, sid: str, row: StepRow) -> Any:
        if row["status"] == StepStatus.completed:
            return loads(row["output"]) if row["output"] is not None else None
        if row["status"] == StepStatus.failed:
            raise StepError(sid, loads(row["error"] or "{}"))
        raise RunFailure(describe_exception(NonDeterminismError(
            f"step {sid!r} is {row['status']} in the run's history but a different kind of step "
            "in the code: the function changed since the run started")))

    def wait_for(self, outcome: Outcome | None) -> NoReturn:
        """Stop this branch until `outcome` (a new sleep, wait or invoke; None: a retry already
        reported) is due. The run parks once every branch has settled."""
        with self._claims:
            if outcome is not None:
                self.pending.append(outcome)
            self.stopping = True
        raise Suspend()

    def still_pending(self, row: StepRow, status: StepStatus) -> None:
        """A stored step of this kind that is not due yet (the run was woken early): wait on."""
        if row["status"] == status:
            self.wait_for(None)

    def enter(self) -> None:
        """An async step started its code (the run settles only once none is running)."""
        self._inflight += 1
        self._settled.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._settled.set()

    # --- step.run: the whole protocol; the async and sync tools only call `fn` --------------

    def start_step(self, step_id: str, retries: int | None, fn: object, returns: Any = None,
                   executor: str | None = None) -> tuple[StepCall | None, Any]:
        """(None, stored result) when memoized, else (the call to make, None). `executor`:
        the step's own choice for plain code ("thread" or "process"), else the function's."""
        if not callable(fn):
            raise TypeError(f"step.run({step_id!r}, fn): fn must be callable, got {fn!r}")
        sid, seq, row = self.claim(step_id)
        kind = results.declared_type(fn, returns)
        if row is not None and row["status"] != StepStatus.retrying:
            return None, results.rebuild(self.memoized(sid, row), kind, sid)
        if time.monotonic() > self.job.lease_until - self.job.lease_margin:
            raise LeaseLost(f"run {self.run_id}: this worker's lease is about to expire "
                            f"(renewals are late); step {sid!r} is left to the next owner")
        attempt = int(row["attempts"]) if row is not None else 0
        self.ctx.attempt = attempt
        where = "loop" if is_coroutine_function(fn) else (executor or self.function.executor)
        call = StepCall(sid, seq, attempt, self.now_ms(), retries, kind, time.monotonic(),
                        where=where)
        if self.span is not None:
            call.span = tracing.start_step(self.span, sid, attempt)
        self.calls[sid] = call
        return call, None

    async def end_step(self, call: StepCall, result: Any = None,
                       exc: Exception | None = None) -> Any:
        """Report the attempt; return the stored result, raise StepError when it failed for
        good, or stop the branch until its retry."""
        self.calls.pop(call.sid, None)
        self.body_since = time.monotonic()
        now = self.now_ms()
        outcome: StepCompleted | StepFailed
        if exc is None:
            try:
                outcome = StepCompleted(call.sid, call.seq, dumps(
                    result, f"output of step {call.sid!r}", self.env.limits.step_output_bytes),
                    call.started, now, call.attempt)
            except PayloadTooLarge as problem:
                exc = StepOutputError(f"{problem}: pass large data by reference (store it "
                                      "elsewhere, e.g. a file or object store, and return its "
                                      "path or key)")
            except PayloadError as problem:
                exc = StepOutputError(str(problem))
        if exc is not None:
            error, retriable, retry_after_ms = failure_of(exc, call.sid)
            outcome = StepFailed(call.sid, call.seq, error, call.started, now, call.attempt,
                                 retriable=retriable, retry_after_ms=retry_after_ms,
                                 retries=call.retries)
        if call.span is not None:
            tracing.end(call.span, exc)
        if isinstance(outcome, StepCompleted) and self._may_defer():
            await self.saved()  # one step at a time (a step that started before it stored)
            self.unsaved = outcome
            self.loop.call_soon(self._save_soon)
            self.ctx.attempt = 0
            self.env.metrics.step_finished(self.function.id, StepStatus.completed, call.started,
                                           now)
            return results.rebuild(loads(outcome.output), call.kind, call.sid)
        applied = await self.report(outcome)
        self.ctx.attempt = 0
        if call.sid in applied.outputs:
            self.env.metrics.step_finished(self.function.id, StepStatus.completed, call.started,
                                           now)
            stored = applied.outputs[call.sid]
            return results.rebuild(None if stored is None else loads(stored), call.kind,
                                   call.sid)
        message = outcome.error.get("message", "") if isinstance(outcome, StepFailed) else ""
        if call.sid in applied.failed:
            self.env.metrics.step_finished(self.function.id, StepStatus.failed, call.started,
                                           now)
            log.warning("run %s %s: step %r failed for good after %d attempts: %s",
                        self.run_id, self.function.id, call.sid, call.attempt + 1, message)
            raise StepError(call.sid, applied.failed[call.sid]) from exc
        self.env.metrics.step_finished(self.function.id, StepStatus.retrying, call.started, now)
        log.warning("run %s %s: step %r attempt %d failed, will retry: %s", self.run_id,
                    self.function.id, call.sid, call.attempt + 1, message)
        self.wait_for(None)

    # --- where a step's code runs ----------------------------------------------------------
    # Plain (sync) code never runs on an event loop: in an async function it runs in the
    # executor's thread pool (so `ctx.step.parallel` of plain steps overlaps, and a slow one
    # holds no other run), or in a child process when the function or step asks for
    # `executor="process"` (CPU-bound code on every core). Coroutines run on the loop.

    async def step_code(self, call: StepCall, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
        """Run a step's code for an async function; return its result."""
        token = CURRENT_STEP.set(call.sid)  # this step's code logs as this step
        try:
            if call.where == "process":
                return await self._in_child(call, fn, args, kwargs)
            if call.where == "loop":
                call.task = asyncio.current_task()
                return await fn(*args, **kwargs)
            self.threaded += 1
            try:
                result = await self.env.threads.run(fn, *args, **kwargs)
            finally:
                self.threaded -= 1
            if inspect.isawaitable(result):  # a lambda that returns a coroutine
                call.task = asyncio.current_task()
                result = await result
            return result
        finally:
            CURRENT_STEP.reset(token)

    def step_code_sync(self, call: StepCall, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        """Run a step's code for a sync function, from its thread; return its result. A
        coroutine it makes runs to its end in this thread, on an event loop of its own."""
        token = CURRENT_STEP.set(call.sid)
        try:
            if call.where == "process":
                return self.call(self._in_child(call, fn, args, kwargs))
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = run_to_end(result)
            return result
        finally:
            CURRENT_STEP.reset(token)

    async def _in_child(self, call: StepCall, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
        """Run plain step code in a child process; arguments and result cross as JSON, as
        the result is stored, so the step behaves the same in a thread."""
        limit = self.env.limits.step_output_bytes
        try:
            args_json = dumps(list(args), f"the arguments of step {call.sid!r}", limit)
            kwargs_json = dumps(kwargs, f"the keyword arguments of step {call.sid!r}", limit)
        except PayloadError as exc:
            raise NonRetriableError(f"{exc} (the code of step {call.sid!r} runs in a "
                                    "process: its arguments cross as JSON)") from None
        try:
            output = await self.env.processes().run(fn, args_json, kwargs_json,
                                                    f"output of step {call.sid!r}", limit)
        except TypeError as exc:  # code that cannot cross by reference (a lambda)
            raise NonRetriableError(str(exc)) from None
        return loads(output)

    # --- other step kinds ------------------------------------------------------------------

    async def sleep(self, step_id: str, duration: timedelta) -> None:
        if not isinstance(duration, timedelta):
            raise TypeError(f"sleep({step_id!r}): duration must be a timedelta")
        await self._sleep(step_id, duration)

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        if not isinstance(when, datetime):
            raise TypeError(f"sleep_until({step_id!r}): when must be a datetime")
        await self._sleep(step_id, when)

    async def _sleep(self, step_id: str, until: datetime | timedelta) -> None:
        now = self.now_ms()
        wake_at = to_ms(until, now, f"sleep {step_id!r}")
        sid, seq, row = self.claim(step_id)
        if row is not None:
            self.still_pending(row, StepStatus.sleeping)
            self.memoized(sid, row)
            return
        outcome = SleepUntil(sid, seq, wake_at, now)
        if wake_at > now:
            self.wait_for(outcome)
        await self.report(outcome)  # already over: the engine completes it at once

    async def wait_for_event(self, step_id: str, event: str, timeout: timedelta | datetime,
                             match: str | None, if_: str | None) -> Event | None:
        if not isinstance(event, str) or not event.strip() or unstorable(event):
            raise TypeError(f"wait_for_event({step_id!r}): event must be a non-empty name "
                            "without U+0000 or lone surrogates")
        now = self.now_ms()
        expires = to_ms(timeout, now, f"wait_for_event {step_id!r} timeout")
        sid, seq, row = self.claim(step_id)
        if row is not None:
            self.still_pending(row, StepStatus.waiting)
            found = self.memoized(sid, row)
            return None if found is None else Event(**found)
        try:
            if match is not None and match_of(self.event_json or {}, match) is None:
                raise NonRetriableError(
                    f"wait_for_event({sid!r}, match={match!r}): the run's event has no "
                    f"{'.'.join(expressions.field_path(match))} to match on")
            if if_ is not None:
                expressions.compile_expression(if_)
                if unstorable(if_):  # no database column holds it
                    raise expressions.ExpressionError(
                        f"if_ must not contain U+0000 or lone surrogates, got {if_!r}"[:300])
        except expressions.ExpressionError as exc:
            raise NonRetriableError(f"wait_for_event({sid!r}): {exc}") from None
        self.wait_for(WaitForEvent(sid, seq, event, expires, now, match, if_))

    async def send_event(self, step_id: str, events: Any) -> dict[str, list[str]]:
        sid, seq, row = self.claim(step_id)
        if row is not None:
            return self.memoized(sid, row)  # type: ignore[no-any-return]
        now = self.now_ms()
        try:
            stored = tuple(StoredEvent(
                id=e.id or f"{self.run_id}:{sid}:{i}", name=e.name,
                data=dumps(e.data, f"send_event({sid!r}) events[{i}].data",
                           self.env.limits.event_bytes),
                ts=e.ts if e.ts is not None else now, trace=tracing.traceparent(self.span))
                for i, e in enumerate(coerce_events(events)))
        except (TypeError, ValueError) as exc:
            raise NonRetriableError(f"send_event({sid!r}): {exc}") from None
        applied = await self.report(EventsSent(sid, seq, stored, now))
        return loads(applied.outputs[sid] or "null")  # type: ignore[no-any-return]

    async def invoke(self, step_id: str, function: Any, data: dict[str, Any] | None,
                     timeout: timedelta | datetime | None) -> Any:
        # An id this app does not define may be another app's (an SDK function's
        # `<app>-<fn>`): the engine resolves it, and fails the step when nothing has it.
        target_id = function if isinstance(function, str) and \
            function not in self.function.app.functions else \
            self.function.app.resolve(function).id
        now = self.now_ms()
        expires = None if timeout is None else to_ms(timeout, now, f"invoke {step_id!r} timeout")
        sid, seq, row = self.claim(step_id)
        if row is not None:
            self.still_pending(row, StepStatus.invoking)
            return self.memoized(sid, row)
        if data is not None and not isinstance(data, dict):
            raise NonRetriableError(f"invoke({sid!r}): data must be a dict, got "
                                    f"{type(data).__name__}")
        if unstorable(target_id):  # no function's id holds it, and no column could
            raise NonRetriableError(f"invoke({sid!r}): no function has the id {target_id!r}")
        try:
            payload = dumps(data or {}, f"invoke({sid!r}) data", self.env.limits.event_bytes)
        except PayloadError as exc:
            raise NonRetriableError(str(exc)) from None
        self.wait_for(Invoke(sid, seq, target_id, payload, now, expires,
                             tracing.traceparent(self.span)))

    async def parallel(self, branches: list[Awaitable[Any]]) -> list[Any]:
        """Run branches together; park or fail only once every branch has settled."""
        await self.saved()
        self._parallel += 1
        try:
            results = await asyncio.gather(*branches, return_exceptions=True)
        finally:
            self._parallel -= 1
        return settle_branches(results)

    def parallel_sync(self, branches: list[Callable[[], Any]]) -> list[Any]:
        with self._claims:
            self._parallel += 1
        try:
            with ThreadPoolExecutor(max_workers=max(1, len(branches)),
                                    thread_name_prefix="stepwise-branch") as pool:
                futures = [pool.submit(b) for b in branches]
                results: list[Any] = []
                for f in futures:
                    try:
                        results.append(f.result())
                    except BaseException as exc:
                        results.append(exc)
        finally:
            with self._claims:
                self._parallel -= 1
        return settle_branches(results)

    # --- the whole run ---------------------------------------------------------------------

    async def run(self) -> None:
        """Execute the function once and report how the execution ended (in a span of its
        own when tracing is on)."""
        if not tracing.enabled():
            await self._run()
            return
        self.span = tracing.start_execution(self.function.id, self.run_id, self.event_json,
                                            self.trace, self.ctx.attempt)
        error: BaseException | str | None = None
        try:
            await self._run()
            error = self.failure
        except ExecutionStopped as stopped:
            error = stopped if not isinstance(stopped, Suspend) else None
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracing.end(self.span, error)

    async def _run(self) -> None:
        try:
            result = await self._invoke()
        except Suspend:
            await self._end(self.pending)
            return
        except RunFailure as failure:
            await self._end([RunFailed(failure.error, retriable=False)])
            return
        except ExecutionStopped:
            raise
        except StepError as exc:
            await self._end([RunFailed(exc.error, retriable=False)])
            return
        except NonRetriableError as exc:
            await self._end([RunFailed(describe_exception(exc), retriable=False)])
            return
        except Exception as exc:
            log.warning("run %s %s: function raised %s: %s", self.run_id, self.function.id,
                        type(exc).__name__, exc)
            # The whole body is retried: what its branches were about to wait for is dropped.
            await self._end([RunFailed(describe_exception(exc), retry_after_ms=int(
                exc.delay * 1000) if isinstance(exc, RetryAfterError) else None)])
            return
        if self.stopping:  # user code swallowed a branch that must wait
            await self._end(self.pending)
            return
        try:
            output = dumps(result, "function output", self.env.limits.step_output_bytes)
        except PayloadError as exc:
            await self._end([RunFailed(describe_exception(StepOutputError(str(exc))),
                                       retriable=False)])
            return
        await self._end([RunCompleted(output)])

    async def _invoke(self) -> Any:
        if self.function.is_async:
            return await self.function.fn(self.ctx)
        return await self.threads.run(self.function.fn, self.ctx)

    def expired(self, now: float) -> list[Outcome]:
        """What to report if this execution ran past its attempt timeout at monotonic `now`:
        each step attempt over it fails, or the body does when no step is running. Called from
        the worker's loop, which then fences the execution."""
        over = [c for c in list(self.calls.values()) if now - c.began > self.timeout_s]
        limit = f"its attempt timeout of {self.timeout_s:g} s"
        hint = ("the attempt was abandoned and its worker slot freed; raise the function's "
                "attempt_timeout if it needs longer, and keep blocking calls out of async code")
        if over:
            ended = self.now_ms()
            return [StepFailed(c.sid, c.seq, {
                "name": "AttemptTimeout", "step_id": c.sid,
                "message": f"step {c.sid!r} ran longer than {limit}: {hint}"},
                c.started, ended, c.attempt, retriable=True, retries=c.retries) for c in over]
        if not self.calls and now - self.body_since > self.timeout_s:
            return [RunFailed({"name": "AttemptTimeout", "message": (
                f"function {self.function.id!r} ran longer than {limit} without finishing a "
                f"step: {hint}")})]
        return []

    async def _end(self, outcomes: list[Outcome]) -> None:
        await self._settled.wait()  # let steps already running report first
        if self.unsaved is not None and self._saving is None and \
                [type(o) for o in outcomes] == [RunCompleted]:
            outcomes = [self.unsaved, *outcomes]  # stored with the run's end, or neither is
            self.unsaved = None
        else:
            await self.saved()
        if self.job.abandoned:
            raise Abandoned(self.run_id)
        applied = await self.env.engine.apply(self.lease,
                                              [*self.take_log(), *outcomes], last=True,
                                              inline=self.env.inline())
        for outcome in outcomes:
            if isinstance(outcome, RunFailed):
                self.failure = str(outcome.error.get("message", "failed"))
        if applied.run_status in (RunStatus.completed, RunStatus.failed):
            self.env.metrics.run_finished(self.function.id, applied.run_status, self.created_at,
                                          self.now_ms())


def failure_of(exc: Exception, step_id: str) -> tuple[ErrorInfo, bool, int | None]:
    """A failed attempt's stored error, whether it may be retried, and after how long (ms,
    None: the usual backoff). An error raised in a child process crosses as its stored shape."""
    if isinstance(exc, ChildRaised):
        return (ErrorInfo(**exc.error, step_id=step_id), not exc.non_retriable,
                None if exc.retry_after_s is None else int(exc.retry_after_s * 1000))
    return (describe_exception(exc, step_id), not isinstance(exc, NonRetriableError),
            int(exc.delay * 1000) if isinstance(exc, RetryAfterError) else None)


def settle_branches(results: list[Any]) -> list[Any]:
    """A branch that must wait parks the run; else the first error wins; else the results."""
    for result in results:
        if isinstance(result, ExecutionStopped):
            raise result
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
