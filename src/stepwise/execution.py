"""One execution of a run: replay stored steps, run new ones, and store each outcome.

An execution turns function code into a few outcomes: a step completed or failed for good
(stored, and the code goes on), a failed attempt to retry later (stored as a timer; the
execution ends), the run completed, or the run failed. Every outcome is one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

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
from .events import Event
from .payloads import PayloadError, dumps, loads
from .storage import ops

if TYPE_CHECKING:
    from .app import Function
    from .worker import Worker

log = logging.getLogger("stepwise.worker")
T = TypeVar("T")
MAX_STEP_ID = 512


def default_backoff(attempt: int) -> float:
    """Seconds before retry number `attempt + 1`: exponential from 2 s, capped at 10 min, with
    jitter so that runs failing together do not retry together."""
    ceiling: float = min(600.0, 2.0 * (2 ** min(attempt, 20)))
    return ceiling / 2 + float(random.uniform(0, ceiling / 2))


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
        self._seen: dict[str, int] = {}
        self._position = 0
        event = None
        if state.event is not None:
            e = state.event
            event = Event(name=e["name"], data=loads(e["data"]), id=e["id"], ts=e["ts"])
        self.ctx = Context(self, event, self.run_id, function.id, self.retry, state.origin_error,
                           function.is_async)

    @property
    def replaying(self) -> bool:
        return self._position < len(self.stored)

    def now_ms(self) -> int:
        return self.worker.clock.now_ms()

    def call(self, coro: Awaitable[T]) -> T:
        """From a sync function's thread, run a coroutine on the worker's loop and wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    # --- steps -----------------------------------------------------------------------------

    def claim(self, step_id: str) -> tuple[str, int, dict[str, Any] | None]:
        """Give this call its unique step id and position; check it against the stored history."""
        if not isinstance(step_id, str) or not step_id or len(step_id) > MAX_STEP_ID:
            raise TypeError(f"a step id must be a non-empty string of at most {MAX_STEP_ID} "
                            f"characters, got {step_id!r}")
        n = self._seen.get(step_id, 0)
        self._seen[step_id] = n + 1
        sid = step_id if n == 0 else f"{step_id}:{n}"
        seq = self._position
        self._position += 1
        expected = self.stored_by_seq.get(seq)
        if expected is not None and expected != sid:
            raise RunFailure(describe_exception(NonDeterminismError(
                f"step #{seq + 1} is {sid!r} in the code but {expected!r} in the run's history: "
                "the function's steps changed since the run started. Replay cannot continue "
                "safely; start a new run or restore the old code.")))
        return sid, seq, self.stored.get(sid)

    def memoized(self, sid: str, row: dict[str, Any]) -> Any:
        if row["status"] == "completed":
            return loads(row["output"]) if row["output"] is not None else None
        raise StepError(sid, loads(row["error"]))

    def begin_step(self, row: dict[str, Any] | None) -> tuple[int, int]:
        attempt = int(row["attempts"]) if row is not None else 0
        self.ctx.attempt = attempt
        return attempt, self.now_ms()

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
        stored = await self.storage.write(ops.save_step, self.run_id, self.worker.id, row,
                                          self.retry, inline=self.worker.quiet)
        self.retry = 0
        self.ctx.attempt = 0
        self.worker.metrics.step_finished(self.function.id, "completed", row)
        return None if stored is None else loads(stored)

    async def step_failed(self, sid: str, seq: int, attempt: int, started: int,
                          exc: Exception) -> None:
        """Store a failed attempt; raise StepError when final, else stop and retry later."""
        error = describe_exception(exc, sid)
        attempts = attempt + 1
        final = isinstance(exc, NonRetriableError) or attempts > self.function.retries
        status = "failed" if final else "retrying"
        row = {"id": sid, "seq": seq, "status": status,
               "attempts": attempts, "output": None, "error": dumps(error, "step error"),
               "started_at": started, "ended_at": self.now_ms()}
        self.worker.metrics.step_finished(self.function.id, status, row)
        if final:
            await self.storage.write(ops.save_step, self.run_id, self.worker.id, row, self.retry,
                                     inline=self.worker.quiet)
            self.retry = 0
            raise StepError(sid, error) from exc
        await self._retry_later(row, attempts, exc)

    async def _retry_later(self, row: dict[str, Any] | None, attempts: int,
                           exc: Exception) -> None:
        delay = exc.delay if isinstance(exc, RetryAfterError) else self.worker.backoff(
            attempts - 1)
        available_at = self.now_ms() + int(delay * 1000)
        await self.storage.write(ops.retry_later, self.run_id, self.worker.id, row, attempts,
                                 available_at, inline=self.worker.quiet)
        self.worker.notify()
        raise ExecutionStopped(f"retry at {available_at}")

    # --- the whole run ---------------------------------------------------------------------

    async def run(self, invoke: Callable[[Context], Awaitable[Any]]) -> None:
        try:
            result = await invoke(self.ctx)
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
                await self._fail(describe_exception(exc))
                return
            log.info("run %s: function raised %r; retry %d of %d", self.run_id, exc, attempts,
                     self.function.retries)
            await self._retry_later(None, attempts, exc)
            return
        try:
            output = dumps(result, "function output", self.worker.limits.step_output_bytes)
        except PayloadError as exc:
            await self._fail(describe_exception(StepOutputError(str(exc))))
            return
        await self.storage.write(ops.complete_run, self.run_id, self.worker.id, output,
                                 self.now_ms(), inline=self.worker.quiet)
        self.worker.metrics.run_finished(self.function.id, "completed")

    async def _fail(self, error: dict[str, Any]) -> None:
        handler = self.function.on_failure.id if self.function.on_failure else None
        await self.storage.write(ops.fail_run, self.run_id, self.worker.id,
                                 dumps(error, "run error"), self.now_ms(), handler,
                                 inline=self.worker.quiet)
        self.worker.metrics.run_finished(self.function.id, "failed")
        if handler:
            self.worker.notify()


class RunFailure(ExecutionStopped):
    """Fail the run at once with `error`, whatever user code catches."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error
