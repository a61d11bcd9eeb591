"""What a function body sees: `ctx.event`, `ctx.step`, `ctx.attempt` and friends."""

from __future__ import annotations

import contextvars
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from .definition import check_executor, check_retries
from .errors import ErrorInfo
from .events import Event

T = TypeVar("T")


class FunctionRef(Protocol):
    """A function to invoke, as `ctx.step.invoke` takes it (an `app.Function`)."""

    @property
    def id(self) -> str: ...


class Execution(Protocol):
    """What the step tools ask of the execution behind them (`execution.Execution`, the
    in-process executor): a step's protocol, so the tools users see import no executor."""

    @property
    def replaying(self) -> bool: ...
    def keep_log(self, level: int, message: str) -> None: ...
    async def saved(self) -> None: ...
    def start_step(self, step_id: str, retries: int | None, fn: object, returns: Any = None,
                   executor: str | None = None) -> tuple[Any, Any]: ...
    async def step_code(self, call: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any: ...
    def step_code_sync(self, call: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any: ...
    async def end_step(self, call: Any, result: Any = None,
                       exc: Exception | None = None) -> Any: ...
    def enter(self) -> None: ...
    def leave(self) -> None: ...
    def call(self, coro: Awaitable[T]) -> T: ...
    async def sleep(self, step_id: str, duration: timedelta) -> None: ...
    async def sleep_until(self, step_id: str, when: datetime) -> None: ...
    async def wait_for_event(self, step_id: str, event: str, timeout: timedelta | datetime,
                             match: str | None, if_: str | None) -> Event | None: ...
    async def send_event(self, step_id: str, events: Any) -> dict[str, list[str]]: ...
    async def invoke(self, step_id: str, function: Any, data: dict[str, Any] | None,
                     timeout: timedelta | datetime | None) -> Any: ...
    async def parallel(self, branches: list[Awaitable[Any]]) -> list[Any]: ...
    def parallel_sync(self, branches: list[Callable[[], Any]]) -> list[Any]: ...

logger = logging.getLogger("stepwise.run")
#: The step whose code is running in this task or thread (log lines are attributed to it).
CURRENT_STEP: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stepwise_current_step", default=None)


class Context:
    """Passed to every function call. `step` is awaited in async functions, called in sync ones."""

    def __init__(self, execution: Execution, event: Event | None, run_id: str, function_id: str,
                 attempt: int, error: ErrorInfo | None, is_async: bool) -> None:
        self.event = event if event is not None else Event(name="", data={})
        self.events = [self.event]
        self.run_id = run_id
        self.function_id = function_id
        self.attempt = attempt
        #: For `on_failure` handlers: the error that failed the run (name, message, stack).
        self.error = error
        self.step: AsyncStep | SyncStep = (AsyncStep if is_async else SyncStep)(execution)
        self.logger: logging.LoggerAdapter[logging.Logger] = _ReplayQuietLogger(
            logger, {"run_id": run_id, "function_id": function_id}, execution)


class _ReplayQuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Drops log lines while the run replays memoized steps, so each line is logged once."""

    def __init__(self, base: logging.Logger, extra: dict[str, Any], execution: Execution) -> None:
        super().__init__(base, extra)
        self._execution = execution

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._execution.replaying:
            return
        super().log(level, msg, *args, **kwargs)
        if self.isEnabledFor(level) or level >= logging.INFO:
            try:
                message = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                message = f"{msg} {args}"
            if kwargs.get("exc_info"):
                message += "\n" + "".join(traceback.format_exc()).rstrip()
            self._execution.keep_log(level, message)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['run_id'] if self.extra else ''}] {msg}", kwargs


@dataclass(frozen=True)
class StepOptions:
    """A step id with options of its own: `ctx.step.run(StepOptions("charge", retries=10), fn)`
    retries that step 10 times whatever the function's `retries`; `returns=Order` rebuilds
    its result as an `Order` where `fn` has no return annotation (a lambda);
    `executor="process"` runs plain (sync) step code in a child process, `"thread"` in a
    thread, whatever the function's `executor`."""

    id: str
    retries: int | None = None
    #: The type the step's result is rebuilt as, when `fn` does not declare it (see `results`).
    returns: Any = None
    executor: str | None = None

    def __post_init__(self) -> None:
        if self.retries is not None:
            check_retries(f"step {self.id!r}", self.retries)
        if self.executor is not None:
            check_executor(f"step {self.id!r}", self.executor)


def _split(step: str | StepOptions) -> tuple[str, int | None, Any, str | None]:
    return ((step.id, step.retries, step.returns, step.executor)
            if isinstance(step, StepOptions) else (step, None, None, None))


class AsyncStep:
    """Step tools for `async def` functions."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    async def run(self, step_id: str | StepOptions, fn: Callable[..., Any], /, *args: Any,
                  **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this run; later executions get its stored result.

        An `async def` fn runs on the function's event loop; a plain one in a thread (or a
        child process, with `executor="process"`), so it never holds the loop.
        """
        sid, retries, returns, executor = _split(step_id)
        await self._ex.saved()  # the step before is stored before this one starts
        call, stored = self._ex.start_step(sid, retries, fn, returns, executor)
        if call is None:
            return stored
        self._ex.enter()
        try:
            try:
                result = await self._ex.step_code(call, fn, args, kwargs)
            except Exception as exc:
                return await self._ex.end_step(call, exc=exc)
            return await self._ex.end_step(call, result)
        finally:
            self._ex.leave()

    async def sleep(self, step_id: str, duration: timedelta) -> None:
        """Park the run for `duration`; no worker is held meanwhile."""
        await self._ex.sleep(step_id, duration)

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        """Park the run until `when` (a timezone-aware datetime)."""
        await self._ex.sleep_until(step_id, when)

    async def wait_for_event(self, step_id: str, *, event: str,
                             timeout: timedelta | datetime, match: str | None = None,
                             if_: str | None = None) -> Event | None:
        """The first `event` arriving after the wait starts that matches, or None at timeout.

        `match="data.user_id"`: the field must be equal in this run's event and the awaited
        one. `if_`: a CEL expression over `event` (this run's) and `async` (the awaited one).
        """
        return await self._ex.wait_for_event(step_id, event, timeout, match, if_)

    async def send_event(self, step_id: str, events: Any) -> dict[str, list[str]]:
        """Send events (an Event, a dict, or a list) exactly once for this run."""
        return await self._ex.send_event(step_id, events)

    async def invoke(self, step_id: str, *, function: FunctionRef | str,
                     data: dict[str, Any] | None = None,
                     timeout: timedelta | datetime | None = None) -> Any:
        """Run another function of the app with `data` as its event data; return its output.

        Its failure (or the timeout) raises StepError here.
        """
        return await self._ex.invoke(step_id, function, data, timeout)

    async def parallel(self, *branches: Awaitable[Any] | Callable[[], Awaitable[Any]]
                       ) -> list[Any]:
        """Run branches (step calls or coroutines of several steps) at once; return results
        in order. Each step is memoized on its own; a branch that fails is retried alone."""
        return await self._ex.parallel([b() if callable(b) else b for b in branches])


class SyncStep:
    """Step tools for plain `def` functions, which run in a worker thread."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    def run(self, step_id: str | StepOptions, fn: Callable[..., Any], /, *args: Any,
            **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this run; later executions get its stored result.

        It runs in this function's thread (or a child process, with `executor="process"`).
        """
        ex = self._ex
        sid, retries, returns, executor = _split(step_id)
        call, stored = ex.start_step(sid, retries, fn, returns, executor)
        if call is None:
            return stored
        try:
            result = ex.step_code_sync(call, fn, args, kwargs)
        except Exception as exc:
            return ex.call(ex.end_step(call, exc=exc))
        return ex.call(ex.end_step(call, result))

    def sleep(self, step_id: str, duration: timedelta) -> None:
        self._ex.call(self._ex.sleep(step_id, duration))

    def sleep_until(self, step_id: str, when: datetime) -> None:
        self._ex.call(self._ex.sleep_until(step_id, when))

    def wait_for_event(self, step_id: str, *, event: str, timeout: timedelta | datetime,
                       match: str | None = None, if_: str | None = None) -> Event | None:
        return self._ex.call(self._ex.wait_for_event(step_id, event, timeout, match, if_))

    def send_event(self, step_id: str, events: Any) -> dict[str, list[str]]:
        return self._ex.call(self._ex.send_event(step_id, events))

    def invoke(self, step_id: str, *, function: FunctionRef | str,
               data: dict[str, Any] | None = None,
               timeout: timedelta | datetime | None = None) -> Any:
        return self._ex.call(self._ex.invoke(step_id, function, data, timeout))

    def parallel(self, *branches: Callable[[], Any]) -> list[Any]:
        """Call each branch (a function that calls steps) in its own thread; results in order."""
        return self._ex.parallel_sync(list(branches))
