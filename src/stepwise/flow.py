"""Flow-control options of `@app.function`: small value classes, validated when declared.

They are stored with the function's definition, so whichever process creates or leases a run
(a server that never imports user code, any worker) enforces them from storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from .errors import DefinitionError
from .expressions import ExpressionError, compile_expression

MAX_PRIORITY_SECONDS = 600


def _positive_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


def _duration_ms(owner: str, name: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise DefinitionError(f"{owner}: {name} must be a positive timedelta, got {value!r}")
    return int(value.total_seconds() * 1000)


def _expression(owner: str, name: str, value: object, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise DefinitionError(f"{owner}: {name} must be a CEL expression string, got {value!r}")
    try:
        compile_expression(value)
    except ExpressionError as exc:
        raise DefinitionError(f"{owner}: {name}: {exc}") from None
    return value


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` runs executing steps at once (per value of `key`); sleeping and waiting
    runs do not count. `scope="app"` shares the limit between every function of the app that
    uses the same key value."""

    limit: int
    key: str | None = None
    scope: Literal["fn", "app"] = "fn"

    def __post_init__(self) -> None:
        _positive_int("Concurrency", "limit", self.limit)
        _expression("Concurrency", "key", self.key)
        if self.scope not in ("fn", "app"):
            raise DefinitionError(f"Concurrency: scope must be 'fn' or 'app', got {self.scope!r}")
        if self.scope == "app" and self.key is None:
            raise DefinitionError("Concurrency: scope='app' needs a key")

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "key": self.key, "scope": self.scope}


@dataclass(frozen=True)
class _WindowLimit:
    """`limit` runs per `period`, per value of `key`."""

    limit: int
    period: timedelta
    key: str | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        _positive_int(name, "limit", self.limit)
        _duration_ms(name, "period", self.period)
        _expression(name, "key", self.key)

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "period_ms": _duration_ms("", "", self.period),
                "key": self.key}


@dataclass(frozen=True)
class Throttle(_WindowLimit):
    """Start at most `limit` runs per `period` (per key); the others wait their turn."""


@dataclass(frozen=True)
class RateLimit(_WindowLimit):
    """Accept at most `limit` runs per `period` (per key); runs over it are recorded as
    `skipped`, with the reason, and never execute."""


@dataclass(frozen=True)
class Debounce:
    """Start one run `period` after the last event (per key), with that last event; `timeout`
    caps how long the first event can be delayed."""

    period: timedelta
    key: str | None = None
    timeout: timedelta | None = None

    def __post_init__(self) -> None:
        _duration_ms("Debounce", "period", self.period)
        _expression("Debounce", "key", self.key)
        _duration_ms("Debounce", "timeout", self.timeout, optional=True)

    def to_json(self) -> dict[str, Any]:
        return {"period_ms": _duration_ms("", "", self.period), "key": self.key,
                "timeout_ms": _duration_ms("", "", self.timeout, optional=True)}


@dataclass(frozen=True)
class Priority:
    """`run` is a CEL expression giving seconds (-600..600): a run with priority P is leased as
    if it had been queued P seconds earlier. A lower-priority run that waited longer than the
    difference goes first, so none starves."""

    run: str

    def __post_init__(self) -> None:
        _expression("Priority", "run", self.run, optional=False)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run}


@dataclass(frozen=True)
class Batch:
    """Collect up to `max_size` events (per key) into one run, started when full or `timeout`
    after the first event; the function reads `ctx.events`."""

    max_size: int
    timeout: timedelta
    key: str | None = None

    def __post_init__(self) -> None:
        _positive_int("Batch", "max_size", self.max_size)
        _duration_ms("Batch", "timeout", self.timeout)
        _expression("Batch", "key", self.key)

    def to_json(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "timeout_ms": _duration_ms("", "", self.timeout),
                "key": self.key}


@dataclass(frozen=True)
class CancelOn:
    """Cancel the run when `event` arrives and matches (`match` field path and/or `if_`)."""

    event: str
    match: str | None = None
    if_: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise DefinitionError("CancelOn: event must be a non-empty event name")
        if self.match is not None:
            from .expressions import field_path

            try:
                field_path(self.match)
            except ExpressionError as exc:
                raise DefinitionError(f"CancelOn: {exc}") from None
        _expression("CancelOn", "if_", self.if_)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "match": self.match, "if_": self.if_}


@dataclass(frozen=True)
class Timeouts:
    """Cancel a run not started within `start`, or not finished within `finish`, of its
    creation."""

    start: timedelta | None = None
    finish: timedelta | None = None

    def __post_init__(self) -> None:
        _duration_ms("Timeouts", "start", self.start, optional=True)
        _duration_ms("Timeouts", "finish", self.finish, optional=True)
        if self.start is None and self.finish is None:
            raise DefinitionError("Timeouts: give start, finish or both")

    def to_json(self) -> dict[str, Any]:
        return {"start_ms": _duration_ms("", "", self.start, optional=True),
                "finish_ms": _duration_ms("", "", self.finish, optional=True)}


def _one(owner: str, value: object, cls: type) -> Any:
    if value is not None and not isinstance(value, cls):
        raise DefinitionError(f"{owner} must be a stepwise.{cls.__name__}, got {value!r}")
    return value


def flow_definition(function_id: str, *, concurrency: Any = None, throttle: Any = None,
                    rate_limit: Any = None, debounce: Any = None, priority: Any = None,
                    batch: Any = None, idempotency: Any = None, cancel_on: Any = None,
                    timeouts: Any = None) -> dict[str, Any]:
    """Validate the options of one function and return what is stored with its definition."""
    where = f"function {function_id!r}"
    limits: list[Concurrency] = []
    for item in concurrency if isinstance(concurrency, list | tuple) else (
            [] if concurrency is None else [concurrency]):
        if isinstance(item, int) and not isinstance(item, bool):
            item = Concurrency(limit=item) if item > 0 else _bad_limit(where, item)
        limits.append(_one(f"{where}: concurrency", item, Concurrency))
    cancels = cancel_on if isinstance(cancel_on, list | tuple) else (
        [] if cancel_on is None else [cancel_on])
    out: dict[str, Any] = {
        "concurrency": [c.to_json() for c in limits],
        "cancel_on": [_one(f"{where}: cancel_on", c, CancelOn).to_json() for c in cancels],
    }
    for name, value, cls in (("throttle", throttle, Throttle), ("rate_limit", rate_limit,
                             RateLimit), ("debounce", debounce, Debounce),
                             ("priority", priority, Priority), ("batch", batch, Batch),
                             ("timeouts", timeouts, Timeouts)):
        checked = _one(f"{where}: {name}", value, cls)
        out[name] = None if checked is None else checked.to_json()
    out["idempotency"] = _expression(f"{where}", "idempotency", idempotency)
    if out["batch"] and (out["debounce"] or out["rate_limit"] or out["idempotency"]):
        raise DefinitionError(f"{where}: batch cannot be combined with debounce, rate_limit or "
                              "idempotency (they act on single events)")
    return out


def _bad_limit(where: str, value: int) -> Concurrency:
    raise DefinitionError(f"{where}: concurrency must be a positive integer, got {value}")
