"""What is stored about a function: triggers, retry policy, failure handler, flow options.

A definition is data, so that whichever process routes an event, leases a run or applies an
outcome (a server that never imports user code, any worker, a remote executor later) reads
the same policy from storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from . import expressions, schedules
from .errors import DefinitionError
from .flow import FlowOptions

#: Default `attempt_timeout`: 15 minutes. Longer jobs (a long transcode) set their own.
DEFAULT_ATTEMPT_TIMEOUT_MS = 15 * 60 * 1000
#: The longest `attempt_timeout` accepted: 7 days.
MAX_ATTEMPT_TIMEOUT_MS = 7 * 24 * 3600 * 1000
DEFAULT_RETRIES = 3
MAX_RETRIES = 100


def trigger_names(event_name: str) -> list[str]:
    """The trigger names an event of this name starts: its own, and Inngest's wildcards, a
    prefix ending at a "/" or a "." followed by "*" (`app/user.created` is taken by
    `app/user.created`, `app/*` and `app/user.*`; a bare `*` takes nothing)."""
    names = [event_name]
    for separator in ("/", "."):
        parts = event_name.split(separator)
        names.extend(separator.join(parts[:n]) + separator + "*" for n in range(1, len(parts)))
    return names


@dataclass(frozen=True)
class EventTrigger:
    """Start a run for every event named `event` (for which the CEL `expression` over
    `event`, when given, is true). A name ending in "/*" or ".*" takes every event whose name
    goes on from there (`trigger_names`)."""

    event: str
    expression: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise DefinitionError("on_event() needs a non-empty event name")
        if self.expression is not None:
            try:
                expressions.compile_expression(self.expression)
            except expressions.ExpressionError as exc:
                raise DefinitionError(f"trigger on {self.event!r}: {exc}") from None

    def matches(self, event: dict[str, Any]) -> bool:
        if self.expression is None:
            return True
        try:
            return expressions.evaluate(self.expression, {"event": event}) is True
        except expressions.ExpressionError:
            return False

    def to_json(self) -> dict[str, Any]:
        if self.expression is None:
            return {"event": self.event}
        return {"event": self.event, "expression": self.expression}


@dataclass(frozen=True)
class CronTrigger:
    """Start a run at every tick of a cron expression, in time zone `tz`."""

    cron: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        try:
            schedules.validate(self.cron, self.tz)
        except ValueError as exc:
            raise DefinitionError(f"on_cron(): {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"cron": self.cron, "tz": self.tz}


Trigger = EventTrigger | CronTrigger


def check_retries(owner: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise DefinitionError(f"{owner}: retries must be an integer from 0 to {MAX_RETRIES}, "
                              f"got {value!r}")
    return value


#: Where plain (sync) step code runs: a thread of the worker, or a child process of its pool.
EXECUTORS = ("thread", "process")


def check_executor(owner: str, value: object) -> str:
    if value not in EXECUTORS:
        raise DefinitionError(f"{owner}: executor must be one of {', '.join(map(repr, EXECUTORS))}"
                              f", got {value!r}")
    return str(value)


@dataclass(frozen=True)
class RetryPolicy:
    """A failed attempt is retried `retries` times; retry n waits a random time between half
    and all of min(`backoff_max_ms`, `backoff_initial_ms` * 2^n) (2^n to 2^(n+1) s by default),
    so that runs failing together do not retry together."""

    retries: int = DEFAULT_RETRIES
    backoff_initial_ms: int = 2000
    backoff_max_ms: int = 600_000

    def __post_init__(self) -> None:
        check_retries("retry policy", self.retries)
        if not 0 < self.backoff_initial_ms <= self.backoff_max_ms:
            raise DefinitionError("retry policy: backoff must satisfy 0 < initial <= max")


#: The longest retention accepted: 100 years (in effect, forever).
MAX_RETENTION_MS = 100 * 365 * 24 * 3600 * 1000


def _retention_ms(kind: str, value: timedelta | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, timedelta):
        raise DefinitionError(f"retention: {kind} must be a timedelta or None, got {value!r}")
    ms = int(value.total_seconds() * 1000)
    if not 0 < ms <= MAX_RETENTION_MS:
        raise DefinitionError(f"retention: {kind} must be positive and at most 100 years")
    return ms


@dataclass(frozen=True)
class Retention:
    """How long a function's finished runs are kept (from when they ended), with their steps,
    logs and the events nothing else holds: `completed` for completed, cancelled and skipped
    runs, `failed` for failed ones (the dead-letter list). None: the server's setting
    (`stepwise server --retention`, `--failed-retention`)."""

    completed: timedelta | None = None
    failed: timedelta | None = None

    def __post_init__(self) -> None:
        _retention_ms("completed", self.completed)
        _retention_ms("failed", self.failed)

    def to_json(self) -> dict[str, int | None]:
        return {"completed_ms": _retention_ms("completed", self.completed),
                "failed_ms": _retention_ms("failed", self.failed)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Retention:
        def span(ms: Any) -> timedelta | None:
            return None if ms is None else timedelta(milliseconds=int(ms))
        return cls(span(raw.get("completed_ms")), span(raw.get("failed_ms")))


@dataclass(frozen=True)
class FunctionDefinition:
    id: str
    app_id: str
    triggers: tuple[Trigger, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_failure: str | None = None  # the id of the function run once when a run fails for good
    handles_failure_of: str | None = None
    flow: FlowOptions = field(default_factory=FlowOptions)
    #: The longest one step attempt (or one stretch of the body between steps) may run.
    attempt_timeout_ms: int = DEFAULT_ATTEMPT_TIMEOUT_MS
    #: Where an SDK app serves this function (`stepwise.remote`); None: Python in a worker.
    url: str | None = None
    #: Why this server cannot run the function as its app synced it (an option it does not
    #: support, or cannot read): each run of it fails with these, naming them.
    problems: tuple[str, ...] = ()
    #: How long its finished runs are kept; None: the server's setting.
    retention: Retention | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "app_id": self.app_id,
            "triggers": [t.to_json() for t in self.triggers],
            "retries": self.retry.retries,
            "backoff": {"initial_ms": self.retry.backoff_initial_ms,
                        "max_ms": self.retry.backoff_max_ms},
            "on_failure": self.on_failure,
            "handles_failure_of": self.handles_failure_of,
            "flow": self.flow.to_json(),
            "attempt_timeout_ms": self.attempt_timeout_ms,
        }
        if self.url is not None:
            out["url"] = self.url
        if self.problems:
            out["problems"] = list(self.problems)
        if self.retention is not None:
            out["retention"] = self.retention.to_json()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FunctionDefinition:
        backoff = raw.get("backoff") or {}
        defaults = RetryPolicy()
        return cls(
            id=raw["id"], app_id=raw["app_id"],
            triggers=tuple(EventTrigger(t["event"], t.get("expression")) if "event" in t
                           else CronTrigger(t["cron"], t.get("tz", "UTC"))
                           for t in raw.get("triggers", ())),
            retry=RetryPolicy(raw.get("retries", DEFAULT_RETRIES),
                              backoff.get("initial_ms", defaults.backoff_initial_ms),
                              backoff.get("max_ms", defaults.backoff_max_ms)),
            on_failure=raw.get("on_failure"), handles_failure_of=raw.get("handles_failure_of"),
            flow=FlowOptions.from_json(raw.get("flow")),
            attempt_timeout_ms=int(raw.get("attempt_timeout_ms", DEFAULT_ATTEMPT_TIMEOUT_MS)),
            url=raw.get("url"), problems=tuple(raw.get("problems") or ()),
            retention=Retention.from_json(raw["retention"]) if raw.get("retention") else None)
