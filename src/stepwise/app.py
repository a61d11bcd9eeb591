"""Apps and function definitions: what user code declares, validated when it is declared."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .definition import (
    DEFAULT_ATTEMPT_TIMEOUT_MS,
    DEFAULT_RETRIES,
    MAX_ATTEMPT_TIMEOUT_MS,
    CronTrigger,
    EventTrigger,
    FunctionDefinition,
    Retention,
    RetryPolicy,
    Trigger,
    check_executor,
    check_retries,
)
from .errors import DefinitionError
from .flow import (
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    FlowOptions,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    flow_definition,
)

if TYPE_CHECKING:
    from .context import Context

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def _check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise DefinitionError(
            f"{kind} id {value!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return value


def on_event(name: str) -> EventTrigger:
    """A trigger: run the function for each event called `name`."""
    return EventTrigger(name)


def on_cron(cron: str, tz: str = "UTC") -> CronTrigger:
    """A trigger: run the function on a schedule, e.g. on_cron("0 9 * * 1-5", tz="Europe/Paris").

    See `stepwise.schedules` for the missed-ticks policy.
    """
    return CronTrigger(cron, tz)


def _attempt_timeout_ms(function_id: str, value: timedelta | None) -> int:
    if value is None:
        return DEFAULT_ATTEMPT_TIMEOUT_MS
    if not isinstance(value, timedelta):
        raise DefinitionError(f"function {function_id!r}: attempt_timeout must be a timedelta")
    ms = int(value.total_seconds() * 1000)
    if not 0 < ms <= MAX_ATTEMPT_TIMEOUT_MS:
        raise DefinitionError(f"function {function_id!r}: attempt_timeout must be positive and "
                              "at most 7 days")
    return ms


@dataclass
class Function:
    """A function declared with `@app.function`; call it directly to run its body (for tests)."""

    app: App
    id: str
    fn: Callable[..., Any]
    triggers: tuple[Trigger, ...]
    retries: int = DEFAULT_RETRIES
    on_failure: Function | None = None
    handles_failure_of: str | None = None
    flow: FlowOptions = field(default_factory=FlowOptions)
    attempt_timeout_ms: int = DEFAULT_ATTEMPT_TIMEOUT_MS
    #: Where its plain (sync) step code runs: "thread" or "process" (see `App.function`).
    executor: str = "thread"
    #: How long its finished runs are kept (see `App.function`); None: the server's setting.
    retention: Retention | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)

    def __call__(self, ctx: Context) -> Any:
        return self.fn(ctx)

    def definition(self) -> FunctionDefinition:
        """What is stored so a server that never imports user code can route events."""
        return FunctionDefinition(
            id=self.id, app_id=self.app.id, triggers=self.triggers,
            retry=RetryPolicy(retries=self.retries),
            on_failure=self.on_failure.id if self.on_failure else None,
            handles_failure_of=self.handles_failure_of, flow=self.flow,
            attempt_timeout_ms=self.attempt_timeout_ms, retention=self.retention)


class App:
    """A set of functions; its id namespaces them in storage."""

    def __init__(self, id: str) -> None:
        self.id = _check_id("app", id)
        self.functions: dict[str, Function] = {}

    def function(
        self,
        *,
        id: str,
        trigger: Trigger | list[Trigger] | tuple[Trigger, ...] | None = None,
        retries: int = DEFAULT_RETRIES,
        on_failure: Callable[..., Any] | None = None,
        concurrency: int | Concurrency | list[Concurrency | int] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        priority: Priority | None = None,
        batch: Batch | None = None,
        idempotency: str | None = None,
        cancel_on: CancelOn | list[CancelOn] | None = None,
        timeouts: Timeouts | None = None,
        singleton: Singleton | None = None,
        attempt_timeout: timedelta | None = None,
        executor: str = "thread",
        retention: Retention | timedelta | None = None,
    ) -> Callable[[Callable[..., Any]], Function]:
        """Declare a function; see the README for every option.

        `attempt_timeout` (default 15 minutes): the longest one step attempt, or one stretch
        of the function's code between steps, may run. Past it the attempt fails with an
        AttemptTimeout error (retried like any failure) and the worker's slot is freed, even
        if the code never yields.

        `executor`: where the function's plain (sync) step code runs. "thread" (the default):
        a thread of the worker. "process": a child process of the worker's process pool, so
        CPU-bound Python uses every core; such code must be a module-level function (given
        as `ctx.step.run(id, fn, *args)`), and its arguments and result cross as JSON. A
        child that dies (a crash, the memory bound) fails only that attempt, which is retried.

        `retention`: how long its finished runs are kept, overriding the server's setting: a
        `stepwise.Retention(completed=, failed=)`, or one timedelta for both. Its on_failure
        handler's runs are kept as long.
        """
        _check_id("function", id)
        check_executor(f"function {id!r}", executor)
        timeout_ms = _attempt_timeout_ms(id, attempt_timeout)
        flow = flow_definition(id, concurrency=concurrency, throttle=throttle,
                               rate_limit=rate_limit, debounce=debounce, priority=priority,
                               batch=batch, idempotency=idempotency, cancel_on=cancel_on,
                               timeouts=timeouts, singleton=singleton)
        if id in self.functions:
            raise DefinitionError(f"function id {id!r} is already used in app {self.id!r}")
        triggers = tuple(trigger) if isinstance(trigger, list | tuple) else (
            (trigger,) if trigger is not None else ())
        for t in triggers:
            if not isinstance(t, EventTrigger | CronTrigger):
                raise DefinitionError(f"function {id!r}: trigger must come from "
                                      f"stepwise.on_event() or stepwise.on_cron(), got {t!r}")
        check_retries(f"function {id!r}", retries)
        if isinstance(retention, timedelta):
            retention = Retention(retention, retention)
        elif retention is not None and not isinstance(retention, Retention):
            raise DefinitionError(f"function {id!r}: retention must be a stepwise.Retention or "
                                  f"a timedelta, got {retention!r}")
        if on_failure is not None and not callable(on_failure):
            raise DefinitionError(f"function {id!r}: on_failure must be a function(ctx)")

        def decorate(fn: Callable[..., Any]) -> Function:
            if not callable(fn):
                raise DefinitionError(f"function {id!r}: @app.function must decorate a function")
            handler = None
            if on_failure is not None and f"{id}-failure" in self.functions:
                raise DefinitionError(f"function id {id}-failure (the on_failure handler of "
                                      f"{id!r}) is already used in app {self.id!r}")
            if on_failure is not None:
                handler_fn = on_failure.fn if isinstance(on_failure, Function) else on_failure
                handler = Function(self, f"{id}-failure", handler_fn, (), retries=retries,
                                   handles_failure_of=id, attempt_timeout_ms=timeout_ms,
                                   retention=retention)
            func = Function(self, id, fn, triggers, retries=retries, on_failure=handler,
                            flow=flow, attempt_timeout_ms=timeout_ms, executor=executor,
                            retention=retention)
            self.functions[id] = func
            if handler is not None:
                self.functions[handler.id] = handler
            return func

        return decorate

    def get(self, function_id: str) -> Function | None:
        return self.functions.get(function_id)

    def resolve(self, function: Function | str) -> Function:
        """A function of this app, given as the decorated function or its id."""
        if isinstance(function, Function):
            if function.app is not self:
                raise DefinitionError(f"function {function.id!r} belongs to app "
                                      f"{function.app.id!r}, not {self.id!r}")
            return function
        found = self.functions.get(function) if isinstance(function, str) else None
        if found is None:
            raise DefinitionError(f"no function {function!r} in app {self.id!r}")
        return found
