"""Errors users raise or catch, and the internal signals that stop an execution."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypedDict


class ErrorInfo(TypedDict, total=False):
    """An error as stored on steps, runs and failed attempts (JSON). An SDK's error keeps
    what its app sent besides (`code`, `data`, ...)."""

    name: str
    message: str
    stack: str
    step_id: str
    #: The error that caused this one, as the SDK serialized it (any JSON).
    cause: Any


class StepwiseError(Exception):
    """Base class of every error stepwise raises on purpose."""


class NonRetriableError(StepwiseError):
    """Raise in a step or function to fail it at once, without retries."""


class RetryAfterError(StepwiseError):
    """Raise to retry the step (or function) after `delay` instead of the usual backoff."""

    def __init__(self, message: str = "", delay: timedelta | float = 0.0) -> None:
        # `RetryAfterError(timedelta(...))` is accepted too: the contract names only the delay.
        if isinstance(message, timedelta | int | float) and not isinstance(message, bool):
            delay, message = message, ""
        super().__init__(message or "retry requested")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError("RetryAfterError delay must not be negative")
        self.delay = seconds


class StepError(StepwiseError):
    """A step failed for good (retries exhausted, or non-retriable); raised at the step call.

    Catch it to run compensation code; left uncaught it fails the run.
    """

    def __init__(self, step_id: str, error: ErrorInfo) -> None:
        self.step_id = step_id
        self.error = error
        super().__init__(f"step {step_id!r} failed: {error.get('name')}: {error.get('message')}")



class StepOutputError(NonRetriableError):
    """A step returned something that cannot be stored (not JSON, or over the size limit)."""


class NonDeterminismError(NonRetriableError):
    """The function reached different steps than the stored history of its run."""


class DefinitionError(StepwiseError, ValueError):
    """A function definition or option is invalid; raised at decoration time."""


class ExecutionStopped(BaseException):
    """Stops one execution of a run: the run was suspended (retry, sleep), cancelled, or lost.

    A BaseException so that `except Exception` in user code does not swallow it.
    """


class LeaseLost(ExecutionStopped):
    """The executor no longer holds the run (its lease expired and another took it, or the run
    already finished): its outcome was refused and changed nothing."""


class StorageLost(LeaseLost):
    """The database could not store an outcome (unreachable, restarting): nothing was written,
    the execution stops, and its run is handed back (or taken over once its lease expires).
    Not a failure of the user's code: it must neither catch it nor spend a retry on it."""


class RunCancelled(ExecutionStopped):
    """The run was cancelled; its execution stops at this step boundary."""


def describe_exception(exc: BaseException, step_id: str | None = None) -> ErrorInfo:
    """The JSON shape of an error as stored on steps and runs."""
    import traceback

    if isinstance(exc, StepError):
        return ErrorInfo(**exc.error)
    out: ErrorInfo = {
        "name": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(exc)),
    }
    if step_id is not None:
        out["step_id"] = step_id
    return out
