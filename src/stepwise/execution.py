"""One execution of a run: replay stored steps, run new ones, and store each outcome.

An execution turns function code into a few outcomes: a step completed or failed for good
(stored at once, and the code goes on), or the run must wait: a retry timer, a sleep, a wait
for an event, an invoked run. Waiting outcomes are collected while parallel branches finish,
then stored together with the run's wake-up time in one transaction (`ops.suspend`), and the
worker lets the run go. The run completing or failing is the last outcome.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import expressions
from .context import Context
from .errors import (
    ExecutionStopped,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepOutputError,
    describe_exception,
)
from .events import Event, coerce_events
from .payloads import PayloadError, dumps, loads
from .storage import ops

if TYPE_CHECKING:
    from .app import Function
    from .worker import Worker

log = logging.getLogger("stepwise.worker")
T = TypeVar("T")
MAX_STEP_ID = 512
_STATUS_RANK = {"queued": 3, "sleeping": 2, "waiting": 1}


def default_backoff(attempt: int) -> float:
    """Seconds before retry number `attempt + 1`: exponential from 2 s, capped at 10 min, with
    jitter so that runs failing together do not retry together."""
    ceiling: float = min(600.0, 2.0 * (2 ** min(attempt, 20)))
    return ceiling / 2 + float(random.uniform(0, ceiling / 2))


class Suspend(ExecutionStopped):
    """The run must wait; what for is in `Execution.parking`."""


class RunFailure(ExecutionStopped):
    """Fail the run at once with `error`, whatever user code catches."""

    def __init__(self, error: dict[str, Any]) -> None:
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


class Execution:
    def __init__(self, worker: Worker, function: Function, state: ops.RunState) -> None:
        self.worker = worker
        self.storage = worker.storage
        self.function = function
        self.run_id: str = state.run["id"]
        self.loop = asyncio.get_running_loop()
        self.stored = state.steps
        self.stored_by_seq = {row["seq"]: sid for sid, row in state.steps.items()}
        self.retry: int = state.run["retry"]
        self.parking: ops.Parking | None = None
        self._seen: dict[str, int] = {}
        self._position = 0
        self._parallel = 0
        self._claims = threading.Lock()
        self._inflight = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self.event_json: dict[str, Any] | None = None
        event = None
        if state.event is not None:
            self.event_json = ops.event_json(state.event)
            event = Event(**self.event_json)
        self.ctx = Context(self, event, self.run_id, function.id, self.retry, state.origin_error,
                           function.is_async)
        if state.batch:
            self.ctx.events = [Event(**ops.event_json(e)) for e in state.batch]

    @property
    def replaying(self) -> bool:
        return self._position < len(self.stored)

    def now_ms(self) -> int:
        return self.worker.clock.now_ms()

    def call(self, coro: Awaitable[T]) -> T:
        """From a sync function's thread, run a coroutine on the worker's loop and wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    async def _write(self, op: Callable[..., T], *args: Any) -> T:
        return await self.storage.write(op, self.run_id, self.worker.id, *args,
                                        inline=self.worker.quiet)

    # --- step bookkeeping ----------------------------------------------------------------

    def claim(self, step_id: str) -> tuple[str, int, dict[str, Any] | None]:
        """Give this call its unique step id and position; check it against the stored history."""
        if not isinstance(step_id, str) or not step_id or len(step_id) > MAX_STEP_ID:
            raise TypeError(f"a step id must be a non-empty string of at most {MAX_STEP_ID} "
                            f"characters, got {step_id!r}")
        with self._claims:
            if self.parking is not None and self._parallel == 0:
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

    def memoized(self, sid: str, row: dict[str, Any]) -> Any:
        if row["status"] == "completed":
            return loads(row["output"]) if row["output"] is not None else None
        if row["status"] == "failed":
            raise StepError(sid, loads(row["error"]))
        raise RunFailure(describe_exception(NonDeterminismError(
            f"step {sid!r} is {row['status']} in the run's history but a different kind of step "
            "in the code: the function changed since the run started")))

    def begin_step(self, row: dict[str, Any] | None) -> tuple[int, int]:
        attempt = int(row["attempts"]) if row is not None else 0
        self.ctx.attempt = attempt
        return attempt, self.now_ms()

    def enter(self) -> None:
        """An async step started its code (parking waits until none is running)."""
        self._inflight += 1
        self._settled.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._settled.set()

    def park(self, available_at: int, status: str, *, step: dict[str, Any] | None = None,
             wait: dict[str, Any] | None = None, invoke: dict[str, Any] | None = None,
             retry: int | None = None, failure: dict[str, Any] | None = None) -> NoReturn:
        """Record why the run must wait and stop this branch of the code."""
        self._add_parking(available_at, status, step=step, wait=wait, invoke=invoke,
                          retry=retry, failure=failure)
        raise Suspend()

    def _add_parking(self, available_at: int, status: str, *,
                     step: dict[str, Any] | None = None, wait: dict[str, Any] | None = None,
                     invoke: dict[str, Any] | None = None, retry: int | None = None,
                     failure: dict[str, Any] | None = None) -> None:
        with self._claims:
            parking = self.parking or ops.Parking(available_at, status, self.retry)
            parking.available_at = min(parking.available_at, available_at)
            if _STATUS_RANK[status] > _STATUS_RANK[parking.status]:
                parking.status = status
            if retry is not None:
                parking.retry = max(parking.retry, retry)
            if step is not None:
                parking.steps.append(step)
            if wait is not None:
                parking.waits.append(wait)
            if invoke is not None:
                parking.invokes.append(invoke)
            if failure is not None:
                parking.failures.append(failure)
            self.parking = parking

    # --- step kinds ----------------------------------------------------------------------

    async def step_completed(self, sid: str, seq: int, attempt: int, started: int,
                             result: Any) -> Any:
        try:
            output = dumps(result, f"output of step {sid!r}",
                           self.worker.limits.step_output_bytes)
        except PayloadError as exc:
            await self.step_failed(sid, seq, attempt, started, StepOutputError(
                f"{exc}. Return JSON-serializable data; pass large data by reference (store it "
                "elsewhere and return its key)."))
        row = {"id": sid, "seq": seq, "status": "completed", "attempts": attempt + 1,
               "output": output, "error": None, "started_at": started, "ended_at": self.now_ms()}
        stored = await self._write(ops.save_step, row, self.retry)
        self.retry = 0
        self.ctx.attempt = 0
        self.worker.metrics.step_finished(self.function.id, "completed", row)
        return None if stored is None else loads(stored)

    async def step_failed(self, sid: str, seq: int, attempt: int, started: int,
                          exc: Exception) -> NoReturn:
        """Store a failed attempt; raise StepError when final, else park until the retry."""
        error = describe_exception(exc, sid)
        attempts = attempt + 1
        final = isinstance(exc, NonRetriableError) or attempts > self.function.retries
        status = "failed" if final else "retrying"
        now = self.now_ms()
        row = {"id": sid, "seq": seq, "status": status, "attempts": attempts, "output": None,
               "error": dumps(error, "step error"), "started_at": started, "ended_at": now}
        self.worker.metrics.step_finished(self.function.id, status, row)
        if final:
            await self._write(ops.save_step, row, self.retry)
            self.retry = 0
            raise StepError(sid, error) from exc
        self.park(now + int(self._delay(exc, attempts) * 1000), "queued", step=row,
                  retry=attempts)

    def _delay(self, exc: Exception, attempts: int) -> float:
        if isinstance(exc, RetryAfterError):
            return exc.delay
        return self.worker.backoff(attempts - 1)

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
        if row is not None and row["status"] != "sleeping":
            self.memoized(sid, row)
            return
        if row is not None:
            wake_at = int(row["ended_at"])
        if wake_at > now:
            self.park(wake_at, "sleeping", step=None if row else {
                "id": sid, "seq": seq, "status": "sleeping", "attempts": 1, "output": None,
                "error": None, "started_at": now, "ended_at": wake_at})
        await self._write(ops.save_step, {
            "id": sid, "seq": seq, "status": "completed", "attempts": 1, "output": None,
            "error": None, "started_at": row["started_at"] if row else now,
            "ended_at": wake_at if row else now}, self.retry)

    async def wait_for_event(self, step_id: str, event: str, timeout: timedelta | datetime,
                             match: str | None, if_: str | None) -> Event | None:
        if not isinstance(event, str) or not event.strip():
            raise TypeError(f"wait_for_event({step_id!r}): event must be a non-empty name")
        now = self.now_ms()
        expires = to_ms(timeout, now, f"wait_for_event {step_id!r} timeout")
        sid, seq, row = self.claim(step_id)
        if row is not None and row["status"] == "waiting":
            if now < int(row["ended_at"]):
                self.park(int(row["ended_at"]), "waiting")
            row = await self._write(ops.expire_step, sid, "waiting", "completed", None, None,
                                    now)
        if row is not None:
            found = self.memoized(sid, row)
            return None if found is None else Event(**found)
        wait = {"step_id": sid, "event_name": event, "match_path": None, "match_key": None,
                "if_expr": None, "trigger_event": dumps(self.event_json, "event"),
                "expires_at": expires}
        try:
            if match is not None:
                found = ops.match_of(self.event_json or {}, match)
                if found is None:
                    raise NonRetriableError(
                        f"wait_for_event({sid!r}, match={match!r}): the run's event has no "
                        f"{'.'.join(expressions.field_path(match))} to match on")
                wait["match_path"], wait["match_key"] = found
            if if_ is not None:
                expressions.compile_expression(if_)
                wait["if_expr"] = if_
        except expressions.ExpressionError as exc:
            raise NonRetriableError(f"wait_for_event({sid!r}): {exc}") from None
        self.park(expires, "waiting", wait=wait, step={
            "id": sid, "seq": seq, "status": "waiting", "attempts": 1, "output": None,
            "error": None, "started_at": now, "ended_at": expires})

    async def send_event(self, step_id: str, events: Any) -> dict[str, list[str]]:
        sid, seq, row = self.claim(step_id)
        if row is not None:
            return self.memoized(sid, row)  # type: ignore[no-any-return]
        now = self.now_ms()
        try:
            items = coerce_events(events)
            stored = [ops.StoredEvent(
                id=e.id or f"{self.run_id}:{sid}:{i}", name=e.name,
                data=dumps(e.data, f"send_event({sid!r}) events[{i}].data",
                           self.worker.limits.event_bytes),
                ts=e.ts if e.ts is not None else now) for i, e in enumerate(items)]
        except (TypeError, ValueError) as exc:
            raise NonRetriableError(f"send_event({sid!r}): {exc}") from None
        output = {"ids": [e.id for e in stored]}
        await self._write(ops.save_step_and_send, {
            "id": sid, "seq": seq, "status": "completed", "attempts": 1,
            "output": dumps(output, "ids"), "error": None, "started_at": now, "ended_at": now},
            self.retry, stored, now)
        self.worker.notify()
        return output

    async def invoke(self, step_id: str, function: Any, data: dict[str, Any] | None,
                     timeout: timedelta | datetime | None) -> Any:
        target = self.function.app.resolve(function)
        now = self.now_ms()
        expires = ops.FOREVER if timeout is None else to_ms(timeout, now,
                                                            f"invoke {step_id!r} timeout")
        sid, seq, row = self.claim(step_id)
        if row is not None and row["status"] == "invoking":
            deadline = ops.FOREVER if row["ended_at"] is None else int(row["ended_at"])
            if now < deadline:
                self.park(deadline, "waiting")
            row = await self._write(ops.expire_step, sid, "invoking", "failed", None, dumps(
                {"name": "InvokeTimeout", "message": f"invoked function {target.id!r} did not "
                 "finish before the timeout", "step_id": sid}, "error"), now)
        if row is not None:
            return self.memoized(sid, row)
        if data is not None and not isinstance(data, dict):
            raise NonRetriableError(f"invoke({sid!r}): data must be a dict, got "
                                    f"{type(data).__name__}")
        try:
            payload = dumps(data or {}, f"invoke({sid!r}) data", self.worker.limits.event_bytes)
        except PayloadError as exc:
            raise NonRetriableError(str(exc)) from None
        self.park(expires, "waiting", invoke={
            "step_id": sid, "function_id": target.id, "data": payload}, step={
            "id": sid, "seq": seq, "status": "invoking", "attempts": 1, "output": None,
            "error": None, "started_at": now, "ended_at": None if timeout is None else expires})

    async def parallel(self, branches: list[Awaitable[Any]]) -> list[Any]:
        """Run branches together; park or fail only once every branch has settled."""
        self._parallel += 1
        try:
            results = await asyncio.gather(*branches, return_exceptions=True)
        finally:
            self._parallel -= 1
        return settle_branches(results)

    def parallel_sync(self, branches: list[Callable[[], Any]]) -> list[Any]:
        from concurrent.futures import ThreadPoolExecutor

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

    async def run(self, invoke: Callable[[Context], Awaitable[Any]]) -> None:
        try:
            result = await invoke(self.ctx)
        except Suspend:
            await self._suspend()
            return
        except RunFailure as failure:
            await self._fail(failure.error)
            return
        except ExecutionStopped:
            raise
        except StepError as exc:
            await self._fail(exc.error)
            return
        except NonRetriableError as exc:
            await self._fail(describe_exception(exc))
            return
        except Exception as exc:
            attempts = self.retry + 1
            if attempts > self.function.retries:
                await self._fail(describe_exception(exc), body_attempt=attempts)
                return
            log.info("run %s: function raised %r; retry %d of %d", self.run_id, exc, attempts,
                     self.function.retries)
            with self._claims:
                self.parking = None  # the whole body is retried
            now = self.now_ms()
            self._add_parking(now + int(self._delay(exc, attempts) * 1000), "queued",
                              retry=attempts, failure={
                                  "step_id": None, "attempt": attempts, "started_at": None,
                                  "ended_at": now,
                                  "error": dumps(describe_exception(exc), "error")})
            await self._suspend()
            return
        if self.parking is not None:  # user code swallowed a branch that must wait
            await self._suspend()
            return
        try:
            output = dumps(result, "function output", self.worker.limits.step_output_bytes)
        except PayloadError as exc:
            await self._fail(describe_exception(StepOutputError(str(exc))))
            return
        await self._write(ops.complete_run, output, self.now_ms())
        self.worker.metrics.run_finished(self.function.id, "completed")

    async def _suspend(self) -> None:
        await self._settled.wait()  # let steps already running store their results first
        assert self.parking is not None
        await self._write(ops.suspend, self.parking, self.now_ms())
        self.worker.notify()

    async def _fail(self, error: dict[str, Any], body_attempt: int | None = None) -> None:
        await self._settled.wait()
        handler = self.function.on_failure.id if self.function.on_failure else None
        await self._write(ops.fail_run, dumps(error, "run error"), self.now_ms(), handler,
                          body_attempt)
        self.worker.metrics.run_finished(self.function.id, "failed")
        self.worker.notify()


def settle_branches(results: list[Any]) -> list[Any]:
    """A branch that must wait parks the run; else the first error wins; else the results."""
    for result in results:
        if isinstance(result, ExecutionStopped):
            raise result
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results

