"""What a function body sees: `ctx.event`, `ctx.step`, `ctx.attempt` and friends."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import Event

if TYPE_CHECKING:
    from .execution import Execution

logger = logging.getLogger("stepwise.run")


class Context:
    """Passed to every function call. `step` is awaited in async functions, called in sync ones."""

    def __init__(self, execution: Execution, event: Event | None, run_id: str, function_id: str,
                 attempt: int, error: dict[str, Any] | None, is_async: bool) -> None:
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
        if not self._execution.replaying:
            super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['run_id'] if self.extra else ''}] {msg}", kwargs


class AsyncStep:
    """Step tools for `async def` functions."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any,
                  **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this run; later executions get its stored result.

        A sync `fn` runs on the worker's event loop: keep it short or make it async.
        """
        ex = self._ex
        if not callable(fn):
            raise TypeError(f"step.run({step_id!r}, fn): fn must be callable, got {fn!r}")
        sid, seq, stored = ex.claim(step_id)
        if stored is not None and stored["status"] != "retrying":
            return ex.memoized(sid, stored)
        attempt, started = ex.begin_step(stored)
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            await ex.step_failed(sid, seq, attempt, started, exc)
            raise AssertionError("unreachable") from exc  # step_failed always raises
        return await ex.step_completed(sid, seq, attempt, started, result)


class SyncStep:
    """Step tools for plain `def` functions, which run in a worker thread."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this run; later executions get its stored result."""
        ex = self._ex
        if not callable(fn):
            raise TypeError(f"step.run({step_id!r}, fn): fn must be callable, got {fn!r}")
        sid, seq, stored = ex.claim(step_id)
        if stored is not None and stored["status"] != "retrying":
            return ex.memoized(sid, stored)
        attempt, started = ex.begin_step(stored)
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = ex.call(result)
        except Exception as exc:
            ex.call(ex.step_failed(sid, seq, attempt, started, exc))
            raise AssertionError("unreachable") from exc
        return ex.call(ex.step_completed(sid, seq, attempt, started, result))
