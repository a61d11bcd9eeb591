"""stepwise: durable execution for Python. Import everything from here."""

from .app import App, Function, on_cron, on_event
from .clock import Clock, ManualClock
from .context import Context, StepOptions
from .definition import Retention
from .errors import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepOutputError,
)
from .events import Event
from .flow import (
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from .payloads import Limits
from .processes import ProcessOptions
from .status import RunStatus, StepStatus
from .storage import Storage, open_storage
from .worker import Worker

__all__ = [
    "App",
    "Batch",
    "CancelOn",
    "Clock",
    "Concurrency",
    "Context",
    "Debounce",
    "Event",
    "Function",
    "Limits",
    "ManualClock",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "ProcessOptions",
    "RateLimit",
    "Retention",
    "RetryAfterError",
    "RunStatus",
    "Singleton",
    "StepError",
    "StepOptions",
    "StepOutputError",
    "StepStatus",
    "Storage",
    "Throttle",
    "Timeouts",
    "Worker",
    "on_cron",
    "on_event",
    "open_storage",
]
