"""An SDK app's sync (`POST /fn/register`) as stepwise definitions.

The sync is read as Inngest's own server reads it: every shape the official SDKs send is
accepted (`concurrency` as a number, an object or a list, both SDKs' spellings of the app's
fields), and a field this server does not know is ignored, with a warning kept for the Apps
page. Only a body whose frame cannot be read (not an object, no app name or URL, a function
without an id or a runtime URL) is refused, with a message naming the field.

Each function's options are translated onto stepwise's own (so an SDK function and a Python
one with the same settings behave the same). An option this server cannot honour, or cannot
read, never refuses the others: the function is registered with the reason among its
`problems`, shown in the API and on the Apps page, and each of its runs fails naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeGuard

from ..definition import (
    CronTrigger,
    EventTrigger,
    FunctionDefinition,
    RetryPolicy,
    Trigger,
)
from ..errors import DefinitionError
from ..flow import (
    SINGLETON_MODES,
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

#: Inngest's default and largest retry counts (`retries.attempts` is the retry count).
DEFAULT_SDK_RETRIES = 4
MAX_SDK_RETRIES = 20
#: At most this many functions in one sync, and characters in an id or expression.
MAX_FUNCTIONS = 1000
MAX_TEXT = 4096
#: At most this many warnings are kept of one sync (the rest are counted).
MAX_WARNINGS = 50
#: The largest number read for a limit, a size or a count.
MAX_NUMBER = 2**31 - 1
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000}

#: The app's fields the SDKs send. `featureObservations` (which SDK features the app used) and
#: `capabilities` are telemetry for Inngest's cloud, read by no one here.
_APP_FIELDS = {"url", "v", "sdk", "framework", "functions", "capabilities", "appName",
               "appname", "deployType", "deploy_type", "appVersion", "app_version",
               "featureObservations", "deployId", "deploy_id"}
#: The function fields the SDKs send. `name` is a display name (the id is what counts).
_FUNCTION_FIELDS = {"id", "name", "triggers", "steps", "concurrency", "throttle", "rateLimit",
                    "debounce", "batchEvents", "priority", "cancel", "timeouts", "idempotency",
                    "singleton"}
#: Options read but not honoured yet: a function using one is registered and marked.
_NOT_SUPPORTED = "is not supported by this server yet"


class RegistrationError(ValueError):
    """The sync cannot be read; the message names the field."""


@dataclass(frozen=True)
class SyncedApp:
    app_id: str
    url: str
    sdk: str
    framework: str
    functions: list[FunctionDefinition]
    #: What was ignored (unknown fields), as sentences naming the field.
    warnings: tuple[str, ...] = ()


def duration(text: Any, where: str) -> timedelta:
    """A Go-style duration ("5s", "1m30s", "100ms") as a timedelta."""
    if not isinstance(text, str) or not text:
        raise RegistrationError(f"{where}: expected a duration such as '5s', got {text!r}"[:300])
    matched = _DURATION.findall(text)
    if "".join(n + u for n, u in matched) != text:
        raise RegistrationError(f"{where}: {text!r} is not a duration such as '5s' or "
                                "'1h30m'"[:300])
    try:
        return timedelta(milliseconds=sum(float(n) * _UNIT_MS[u] for n, u in matched))
    except OverflowError:
        raise RegistrationError(f"{where}: {text!r} is longer than any duration "
                                "stepwise keeps"[:300]) from None


def parse(body: Any) -> SyncedApp:
    """Read a register body (both SDKs' spellings); raises `RegistrationError` only when its
    frame cannot be read."""
    if not isinstance(body, dict):
        raise RegistrationError(f"the body must be a JSON object, got {_kind(body)}")
    warnings = _Warnings()
    warnings.unknown("the app", body, _APP_FIELDS)
    app_id = body.get("appName") or body.get("appname")
    url = body.get("url")
    if not _storable(app_id) or not app_id.strip():
        raise RegistrationError("appName (or appname) must be the app's id, a non-empty string "
                                "of printable text")
    if not _storable(url) or not url.startswith(("http://", "https://")):
        raise RegistrationError(f"url must be the app's http(s) serve URL, got {url!r}"[:300])
    functions = body.get("functions")
    if functions is None:
        functions = []
    if not isinstance(functions, list):
        raise RegistrationError(f"functions must be a list, got {_kind(functions)}")
    if len(functions) > MAX_FUNCTIONS:
        raise RegistrationError(f"functions: at most {MAX_FUNCTIONS} in one app, got "
                                f"{len(functions)}")
    definitions = [_function(app_id, raw, i, warnings) for i, raw in enumerate(functions)]
    ids = [d.id for d in definitions]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise RegistrationError(f"function ids must be unique; repeated: {repeated}"[:300])
    return SyncedApp(app_id, url, _text(body.get("sdk")), _text(body.get("framework")),
                     definitions, warnings.kept())


class _Warnings:
    """The sentences of one sync's warnings, capped."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_WARNINGS:
            self.items.append(_printable(text[:300]))
        else:
            self.dropped += 1

    def unknown(self, where: str, raw: dict[str, Any], known: set[str]) -> None:
        for name in sorted(str(k) for k in raw if k not in known):
            self.add(f"{where}: field {name!r} is not known to this server; ignored")

    def kept(self) -> tuple[str, ...]:
        more = [f"... and {self.dropped} more"] if self.dropped else []
        return (*self.items, *more)


def _function(app_id: str, raw: Any, index: int, warnings: _Warnings) -> FunctionDefinition:
    """One function: its frame (id, runtime URL) must be readable; its options are translated,
    or their problems recorded on the function."""
    where = f"functions[{index}]"
    if not isinstance(raw, dict):
        raise RegistrationError(f"{where} must be an object, got {_kind(raw)}")
    fid = raw.get("id")
    if not _storable(fid) or not fid.strip():
        raise RegistrationError(f"{where}.id must be a non-empty string of printable text, "
                                f"got {fid!r}"[:300])
    where = f"function {fid!r}"
    warnings.unknown(where, raw, _FUNCTION_FIELDS)
    url = _runtime_url(where, raw.get("steps"))
    problems: list[str] = []
    retries = _retries(where, raw.get("steps"), problems, warnings)
    triggers = _triggers(where, raw.get("triggers"), problems, warnings)
    flow = _flow(where, fid, raw, problems, warnings)
    return FunctionDefinition(id=fid, app_id=app_id, triggers=tuple(triggers),
                              retry=RetryPolicy(retries), flow=flow, url=url,
                              problems=tuple(_printable(p[:300]) for p in problems))


def _printable(text: str) -> str:
    """A message quoting what was sent, made storable (a lone surrogate escaped)."""
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def _runtime_url(where: str, steps: Any) -> str:
    step = steps.get("step") if isinstance(steps, dict) else None
    runtime = step.get("runtime") if isinstance(step, dict) else None
    url = runtime.get("url") if isinstance(runtime, dict) else None
    if not isinstance(runtime, dict) or runtime.get("type", "http") != "http" or \
            not _storable(url) or not url.startswith(("http://", "https://")):
        raise RegistrationError(f"{where}: steps.step.runtime must be {{type: 'http', url: "
                                "'<the function's http(s) URL>'}")
    return url


def _retries(where: str, steps: Any, problems: list[str], warnings: _Warnings) -> int:
    """`retries.attempts`, the retry count; like Inngest, above 20 is read as 20."""
    retries = steps["step"].get("retries")
    if retries is None:
        return DEFAULT_SDK_RETRIES
    attempts = retries.get("attempts", DEFAULT_SDK_RETRIES) if isinstance(retries, dict) \
        else retries
    if attempts is None:
        return DEFAULT_SDK_RETRIES
    if isinstance(attempts, float) and attempts.is_integer():
        attempts = int(attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        problems.append(f"steps.step.retries.attempts must be an integer from 0 to "
                        f"{MAX_SDK_RETRIES}, got {attempts!r}"[:200])
        return DEFAULT_SDK_RETRIES
    if attempts > MAX_SDK_RETRIES:
        warnings.add(f"{where}: retries.attempts {attempts} is more than Inngest's largest, "
                     f"{MAX_SDK_RETRIES}; read as {MAX_SDK_RETRIES}")
        return MAX_SDK_RETRIES
    return attempts


def _triggers(where: str, raw: Any, problems: list[str], warnings: _Warnings) -> list[Trigger]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"triggers must be a list, got {_kind(raw)}")
        return []
    triggers: list[Trigger] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"triggers[{i}] must be an object, got {_kind(item)}")
            continue
        try:
            if "event" in item:
                warnings.unknown(f"{where}: triggers[{i}]", item, {"event", "expression"})
                event, expression = item["event"], item.get("expression") or None
                if not _storable(event) or (expression is not None and
                                            not _storable(expression)):
                    raise RegistrationError("event and expression must be printable strings")
                triggers.append(EventTrigger(event, expression))
            elif "cron" in item:
                warnings.unknown(f"{where}: triggers[{i}]", item, {"cron", "jitter"})
                if item.get("jitter"):
                    problems.append(f"triggers[{i}].jitter {_NOT_SUPPORTED}")
                spec = item["cron"]
                if not _storable(spec):
                    raise RegistrationError(f"cron must be a printable string, got "
                                            f"{_kind(spec)}")
                spec, tz = spec.strip(), "UTC"
                if spec.startswith(("TZ=", "CRON_TZ=")):
                    zone, _, spec = spec.partition(" ")
                    tz = zone.split("=", 1)[1]
                triggers.append(CronTrigger(spec.strip(), tz))
            else:
                raise RegistrationError(f"needs event or cron, got {sorted(map(str, item))}")
        except (RegistrationError, DefinitionError) as exc:
            problems.append(f"triggers[{i}]: {exc}")
    return triggers


def _flow(where: str, fid: str, raw: dict[str, Any], problems: list[str],
          warnings: _Warnings) -> FlowOptions:
    """The function's flow control; an option that cannot be read or honoured is recorded
    among `problems` and left out, so the others still apply."""
    options: dict[str, Any] = {}
    reading = _Options(where, problems, warnings)
    for field, reader in _READERS.items():
        value = raw.get(field)
        if value is None or value == [] or value == {}:
            continue
        try:
            option = reader(reading, field, value)
            if option is not None:
                name, translated = option
                flow_definition(fid, **{name: translated})  # checked alone, named alone
                options[name] = translated
        except (RegistrationError, DefinitionError) as exc:
            problems.append(_plain(exc, fid) if str(exc).startswith(field) else
                            f"{field}: {_plain(exc, fid)}")
    try:
        return flow_definition(fid, **options)
    except DefinitionError as exc:  # options valid alone that cannot be combined
        problems.append(_plain(exc, fid))
        return FlowOptions()


def _plain(exc: Exception, fid: str) -> str:
    """An error's message without the function's name (the problem is listed under it)."""
    return str(exc).replace(f"function {fid!r}: ", "")


Option = tuple[str, Any] | None


class _Options:
    """Readers of one function's flow-control fields, in the SDKs' shapes. A reader answers
    the stepwise option (its keyword and value) or None (nothing to apply), raises naming the
    field, and records what it read but cannot honour among `problems`."""

    def __init__(self, where: str, problems: list[str], warnings: _Warnings) -> None:
        self.where, self.problems, self.warnings = where, problems, warnings

    def object(self, name: str, value: Any, known: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise RegistrationError(f"{name} must be an object, got {_kind(value)}")
        self.warnings.unknown(f"{self.where}: {name}", value, known)
        return value

    def concurrency(self, name: str, value: Any) -> Option:
        """A number (the limit), one object or a list of them (`{limit, key?, scope?}`)."""
        items = value if isinstance(value, list) else [value]
        limits = []
        for i, item in enumerate(items):
            at = f"{name}[{i}]" if isinstance(value, list) else name
            if not isinstance(item, dict):
                if isinstance(item, bool) or not isinstance(item, int):  # as Inngest does
                    self.warnings.add(f"{self.where}: {at} {item!r} is not a limit; ignored")
                    continue
                item = {"limit": item}
            item = self.object(at, item, {"limit", "key", "scope"})
            limit = _int(item.get("limit"), f"{at}.limit")
            if limit <= 0:  # Inngest reads 0 as "no limit of its own"
                continue
            scope = item.get("scope") or "fn"
            if scope not in ("fn", "env", "account"):
                raise RegistrationError(f"{at}.scope must be fn, env or account, got "
                                        f"{scope!r}"[:200])
            key = _key(item.get("key"), f"{at}.key")
            if scope != "fn" and key is None:
                self.problems.append(f"{at}: scope {scope!r} without a key {_NOT_SUPPORTED}")
                continue
            limits.append(Concurrency(limit=limit, key=key,
                                      scope="fn" if scope == "fn" else "app"))
        return ("concurrency", limits) if limits else None

    def window(self, name: str, value: Any, extra: set[str]) -> dict[str, Any]:
        item = self.object(name, value, {"limit", "period", "key", *extra})
        limit = _int(item.get("limit"), f"{name}.limit")
        return {"limit": 1 if limit == 0 and name == "throttle" else limit,  # as Inngest reads it
                "period": duration(item.get("period"), f"{name}.period"),
                "key": _key(item.get("key"), f"{name}.key")}

    def throttle(self, name: str, value: Any) -> Option:
        burst = value.get("burst") if isinstance(value, dict) else None
        return "throttle", Throttle(**self.window(name, value, {"burst"}),
                                    burst=0 if burst is None else _int(burst, f"{name}.burst"))

    def rate_limit(self, name: str, value: Any) -> Option:
        return "rate_limit", RateLimit(**self.window(name, value, set()))

    def debounce(self, name: str, value: Any) -> Option:
        item = self.object(name, value, {"period", "key", "timeout"})
        timeout = item.get("timeout")
        return "debounce", Debounce(
            duration(item.get("period"), f"{name}.period"), key=_key(item.get("key"),
                                                                     f"{name}.key"),
            timeout=duration(timeout, f"{name}.timeout") if timeout else None)

    def batch(self, name: str, value: Any) -> Option:
        item = self.object(name, value, {"maxSize", "timeout", "key", "if"})
        return "batch", Batch(_int(item.get("maxSize"), f"{name}.maxSize"),
                              duration(item.get("timeout"), f"{name}.timeout"),
                              key=_key(item.get("key"), f"{name}.key"),
                              if_=_key(item.get("if"), f"{name}.if"))

    def priority(self, name: str, value: Any) -> Option:
        run = _key(self.object(name, value, {"run"}).get("run"), f"{name}.run")
        return None if run is None else ("priority", Priority(run=run))

    def cancel(self, name: str, value: Any) -> Option:
        cancels = []
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            at = f"{name}[{i}]"
            item = self.object(at, item, {"event", "if", "timeout"})
            timeout = item.get("timeout")
            event = item.get("event")
            if not _storable(event):
                raise RegistrationError(f"{at}.event must be an event name, got {_kind(event)}")
            cancels.append(CancelOn(event=event, if_=_key(item.get("if"), f"{at}.if"),
                                    timeout=duration(timeout, f"{at}.timeout") if timeout
                                    else None))
        return "cancel_on", cancels

    def timeouts(self, name: str, value: Any) -> Option:
        item = self.object(name, value, {"start", "finish"})
        start, finish = item.get("start"), item.get("finish")
        if not start and not finish:
            return None
        return "timeouts", Timeouts(
            start=duration(start, f"{name}.start") if start else None,
            finish=duration(finish, f"{name}.finish") if finish else None)

    def idempotency(self, name: str, value: Any) -> Option:
        return "idempotency", _key(value, name)

    def singleton(self, name: str, value: Any) -> Option:
        item = self.object(name, value, {"key", "mode"})
        mode = item.get("mode")
        if mode not in SINGLETON_MODES:
            raise RegistrationError(f"{name}.mode must be skip or cancel, got {mode!r}"[:200])
        return "singleton", Singleton(mode=mode, key=_key(item.get("key"), f"{name}.key"))


_READERS = {"concurrency": _Options.concurrency, "throttle": _Options.throttle,
            "rateLimit": _Options.rate_limit, "debounce": _Options.debounce,
            "batchEvents": _Options.batch, "priority": _Options.priority,
            "cancel": _Options.cancel, "timeouts": _Options.timeouts,
            "idempotency": _Options.idempotency, "singleton": _Options.singleton}


def _int(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_NUMBER:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not \
            -MAX_NUMBER <= value <= MAX_NUMBER:
        raise RegistrationError(f"{name} must be an integer up to {MAX_NUMBER}, got "
                                f"{value!r}"[:200])
    return value


def _key(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not _storable(value):
        raise RegistrationError(f"{name} must be an expression string, got {_kind(value)}")
    return value


def _storable(value: Any) -> TypeGuard[str]:
    """A string this server can store and show: UTF-8, no NUL, at most `MAX_TEXT` long."""
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800")
        return False
    return True


def _text(value: Any) -> str:
    return value[:200] if _storable(value) else ""


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


