"""Flow-control options of `@app.function`: small value classes, validated when declared.

They are stored with the function's definition, so whichever process creates or leases a run
(a server that never imports user code, any worker) enforces them from storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from .errors import DefinitionError
from .expressions import ExpressionError, compile_expression

MAX_PRIORITY_SECONDS = 600
T = TypeVar("T")


def _ms(value: timedelta) -> int:
    return int(value.total_seconds() * 1000)


def _td(ms: int | None) -> timedelta | None:
    return None if ms is None else timedelta(milliseconds=ms)


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

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Concurrency:
        return cls(raw["limit"], raw.get("key"), raw.get("scope", "fn"))


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

    @property
    def period_ms(self) -> int:
        return _ms(self.period)

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "period_ms": self.period_ms, "key": self.key}

    @classmethod
    def from_json(cls: type[T], raw: dict[str, Any]) -> T:
        return cls(raw["limit"], timedelta(milliseconds=raw["period_ms"]),  # type: ignore[call-arg]
                   raw.get("key"))


@dataclass(frozen=True)
class Throttle(_WindowLimit):
    """Start `limit` runs per `period` (per key) at an even pace, one every `period / limit`;
    after a quiet spell up to `limit + burst` start at once. The others wait their turn, none
    is dropped. Inngest's throttle (GCRA), so an SDK function's throttle means the same."""

    burst: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 0:
            raise DefinitionError(f"Throttle: burst must be a non-negative integer, got "
                                  f"{self.burst!r}")

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "burst": self.burst}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Throttle:
        return cls(raw["limit"], timedelta(milliseconds=raw["period_ms"]), raw.get("key"),
                   int(raw.get("burst") or 0))


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

    @property
    def period_ms(self) -> int:
        return _ms(self.period)

    @property
    def timeout_ms(self) -> int | None:
        return None if self.timeout is None else _ms(self.timeout)

    def to_json(self) -> dict[str, Any]:
        return {"period_ms": self.period_ms, "key": self.key, "timeout_ms": self.timeout_ms}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Debounce:
        return cls(timedelta(milliseconds=raw["period_ms"]), raw.get("key"),
                   _td(raw.get("timeout_ms")))


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

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Priority:
        return cls(raw["run"])


@dataclass(frozen=True)
class Batch:
    """Collect up to `max_size` events (per key) into one run, started when full or `timeout`
    after the first event; the function reads `ctx.events`. With `if_` (CEL over `event`),
    only events for which it is true are batched; the others run at once, alone."""

    max_size: int
    timeout: timedelta
    key: str | None = None
    if_: str | None = None

    def __post_init__(self) -> None:
        _positive_int("Batch", "max_size", self.max_size)
        _duration_ms("Batch", "timeout", self.timeout)
        _expression("Batch", "key", self.key)
        _expression("Batch", "if_", self.if_)

    @property
    def timeout_ms(self) -> int:
        return _ms(self.timeout)

    def to_json(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "timeout_ms": self.timeout_ms, "key": self.key,
                **({} if self.if_ is None else {"if_": self.if_})}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Batch:
        return cls(raw["max_size"], timedelta(milliseconds=raw["timeout_ms"]), raw.get("key"),
                   raw.get("if_"))


@dataclass(frozen=True)
class CancelOn:
    """Cancel the run when `event` arrives and matches (`match` field path and/or `if_`),
    within `timeout` of the run's creation when given (after it, the event no longer
    cancels)."""

    event: str
    match: str | None = None
    if_: str | None = None
    timeout: timedelta | None = None

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
        _duration_ms("CancelOn", "timeout", self.timeout, optional=True)

    @property
    def timeout_ms(self) -> int | None:
        return None if self.timeout is None else _ms(self.timeout)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "match": self.match, "if_": self.if_,
                **({} if self.timeout is None else {"timeout_ms": self.timeout_ms})}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CancelOn:
        return cls(raw["event"], raw.get("match"), raw.get("if_"), _td(raw.get("timeout_ms")))


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

    @property
    def start_ms(self) -> int | None:
        return None if self.start is None else _ms(self.start)

    @property
    def finish_ms(self) -> int | None:
        return None if self.finish is None else _ms(self.finish)

    def to_json(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "finish_ms": self.finish_ms}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Timeouts:
        return cls(_td(raw.get("start_ms")), _td(raw.get("finish_ms")))


#: What a singleton does with a new run while one (with the same key) is unfinished.
SINGLETON_MODES = ("skip", "cancel")


@dataclass(frozen=True)
class Singleton:
    """At most one unfinished run (per value of `key`, a CEL expression over `event`; one
    that is false makes that run no singleton). `mode="skip"`: a new run while one is
    unfinished is recorded as skipped and never runs. `mode="cancel"`: the unfinished one is
    cancelled and the new one runs (Inngest's `singleton`)."""

    mode: str
    key: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SINGLETON_MODES:
            raise DefinitionError(f"Singleton: mode must be 'skip' or 'cancel', got "
                                  f"{self.mode!r}")
        _expression("Singleton", "key", self.key)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "key": self.key}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Singleton:
        return cls(raw["mode"], raw.get("key"))


@dataclass(frozen=True)
class FlowOptions:
    """Every flow-control option of one function, as declared and as stored."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: Priority | None = None
    batch: Batch | None = None
    idempotency: str | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    timeouts: Timeouts | None = None
    singleton: Singleton | None = None

    @property
    def empty(self) -> bool:
        """No option set: runs take the fast path."""
        return self == _NO_FLOW

    def to_json(self) -> dict[str, Any]:
        def one(value: Any) -> Any:
            return None if value is None else value.to_json()

        return {"concurrency": [c.to_json() for c in self.concurrency],
                "cancel_on": [c.to_json() for c in self.cancel_on],
                "throttle": one(self.throttle), "rate_limit": one(self.rate_limit),
                "debounce": one(self.debounce), "priority": one(self.priority),
                "batch": one(self.batch), "timeouts": one(self.timeouts),
                "idempotency": self.idempotency,
                **({"singleton": self.singleton.to_json()} if self.singleton else {})}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> FlowOptions:
        """The stored form back into the value classes (validated again on the way)."""
        if not raw:
            return _NO_FLOW

        def one(name: str, kind: Any) -> Any:
            value = raw.get(name)
            return None if value is None else kind.from_json(value)

        return cls(
            concurrency=tuple(Concurrency.from_json(c) for c in raw.get("concurrency") or ()),
            throttle=one("throttle", Throttle), rate_limit=one("rate_limit", RateLimit),
            debounce=one("debounce", Debounce), priority=one("priority", Priority),
            batch=one("batch", Batch), idempotency=raw.get("idempotency"),
            cancel_on=tuple(CancelOn.from_json(c) for c in raw.get("cancel_on") or ()),
            timeouts=one("timeouts", Timeouts), singleton=one("singleton", Singleton))


_NO_FLOW = FlowOptions()


def _one(owner: str, value: object, cls: type[T]) -> T | None:
    return None if value is None else _each(owner, value, cls)


def _each(owner: str, value: object, cls: type[T]) -> T:
    if not isinstance(value, cls):
        raise DefinitionError(f"{owner} must be a stepwise.{cls.__name__}, got {value!r}")
    return value


def flow_definition(function_id: str, *, concurrency: Any = None, throttle: Any = None,
                    rate_limit: Any = None, debounce: Any = None, priority: Any = None,
                    batch: Any = None, idempotency: Any = None, cancel_on: Any = None,
                    timeouts: Any = None, singleton: Any = None) -> FlowOptions:
    """Validate the options of one function as given to `@app.function`."""
    where = f"function {function_id!r}"
    limits: list[Concurrency] = []
    for item in concurrency if isinstance(concurrency, list | tuple) else (
            [] if concurrency is None else [concurrency]):
        if isinstance(item, int) and not isinstance(item, bool):
            item = Concurrency(limit=item) if item > 0 else _bad_limit(where, item)
        limits.append(_each(f"{where}: concurrency", item, Concurrency))
    cancels = cancel_on if isinstance(cancel_on, list | tuple) else (
        [] if cancel_on is None else [cancel_on])
    options = FlowOptions(
        concurrency=tuple(limits),
        cancel_on=tuple(_each(f"{where}: cancel_on", c, CancelOn) for c in cancels),
        throttle=_one(f"{where}: throttle", throttle, Throttle),
        rate_limit=_one(f"{where}: rate_limit", rate_limit, RateLimit),
        debounce=_one(f"{where}: debounce", debounce, Debounce),
        priority=_one(f"{where}: priority", priority, Priority),
        batch=_one(f"{where}: batch", batch, Batch),
        timeouts=_one(f"{where}: timeouts", timeouts, Timeouts),
        singleton=_one(f"{where}: singleton", singleton, Singleton),
        idempotency=_expression(f"{where}", "idempotency", idempotency))
    if options.singleton and options.batch:
        raise DefinitionError(f"{where}: singleton cannot be combined with batch")
    if options.batch and (options.debounce or options.rate_limit or options.idempotency):
        raise DefinitionError(f"{where}: batch cannot be combined with debounce, rate_limit or "
                              "idempotency (they act on single events)")
    return options


def _bad_limit(where: str, value: int) -> Concurrency:
    raise DefinitionError(f"{where}: concurrency must be a positive integer, got {value}")
