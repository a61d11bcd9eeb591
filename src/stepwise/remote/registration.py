"""An SDK app's sync (`POST /fn/register`) as stepwise definitions.

Every field the SDKs send is either translated onto stepwise's own options (so an SDK function
and a Python one with the same settings behave the same) or refused with a message naming the
field: nothing is silently ignored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..definition import (
    CronTrigger,
    EventTrigger,
    FunctionDefinition,
    RetryPolicy,
    Trigger,
)
from ..errors import DefinitionError
from ..flow import (
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Throttle,
    Timeouts,
    flow_definition,
)

#: Inngest's default and largest retry counts (`retries.attempts` is the retry count).
DEFAULT_SDK_RETRIES = 4
MAX_SDK_RETRIES = 20
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000}
# featureObservations: which SDK features the app used (telemetry for Inngest), read by no one.
_KNOWN_APP_FIELDS = {"url", "v", "sdk", "framework", "functions", "capabilities", "appName",
                     "appname", "deployType", "deploy_type", "appVersion", "app_version",
                     "featureObservations"}
_KNOWN_FUNCTION_FIELDS = {"id", "name", "triggers", "steps", "concurrency", "throttle",
                          "rateLimit", "debounce", "batchEvents", "priority", "cancel",
                          "timeouts", "idempotency", "singleton"}


class RegistrationError(ValueError):
    """The sync cannot be accepted; the message names the field."""


@dataclass(frozen=True)
class SyncedApp:
    app_id: str
    url: str
    sdk: str
    framework: str
    functions: list[FunctionDefinition]


def duration(text: Any, where: str) -> timedelta:
    """A Go-style duration ("5s", "1m30s", "100ms") as a timedelta."""
    if not isinstance(text, str) or not text:
        raise RegistrationError(f"{where}: expected a duration such as '5s', got {text!r}")
    matched = _DURATION.findall(text)
    if "".join(n + u for n, u in matched) != text:
        raise RegistrationError(f"{where}: {text!r} is not a duration such as '5s' or '1h30m'")
    return timedelta(milliseconds=sum(float(n) * _UNIT_MS[u] for n, u in matched))


def parse(body: Any) -> SyncedApp:
    """Validate and translate a register body (both SDKs' spellings)."""
    if not isinstance(body, dict):
        raise RegistrationError("body must be an object")
    unknown = sorted(set(body) - _KNOWN_APP_FIELDS)
    if unknown:
        raise RegistrationError(f"unsupported field(s) {unknown} in the app")
    app_id = body.get("appName") or body.get("appname")
    url = body.get("url")
    if not isinstance(app_id, str) or not app_id:
        raise RegistrationError("appName (or appname) is required")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise RegistrationError(f"url must be the app's http(s) serve URL, got {url!r}")
    functions = body.get("functions")
    if not isinstance(functions, list):
        raise RegistrationError("functions must be a list")
    definitions = [_function(app_id, f, i) for i, f in enumerate(functions)]
    ids = [d.id for d in definitions]
    if len(set(ids)) != len(ids):
        raise RegistrationError(f"function ids are not unique: {ids}")
    return SyncedApp(app_id, url, str(body.get("sdk", "")), str(body.get("framework", "")),
                     definitions)


def _function(app_id: str, raw: Any, index: int) -> FunctionDefinition:
    where = f"functions[{index}]"
    if not isinstance(raw, dict):
        raise RegistrationError(f"{where} must be an object")
    fid = raw.get("id")
    if not isinstance(fid, str) or not fid:
        raise RegistrationError(f"{where}.id is required")
    where = f"function {fid!r}"
    unknown = sorted(set(raw) - _KNOWN_FUNCTION_FIELDS)
    if unknown:
        raise RegistrationError(f"{where}: unsupported field(s) {unknown}")
    if raw.get("singleton"):
        raise RegistrationError(f"{where}: singleton is not supported yet")
    step = (raw.get("steps") or {}).get("step") or {}
    runtime = step.get("runtime") or {}
    url = runtime.get("url")
    if runtime.get("type") != "http" or not isinstance(url, str):
        raise RegistrationError(f"{where}: steps.step.runtime must be {{type: http, url}}")
    attempts = (step.get("retries") or {}).get("attempts", DEFAULT_SDK_RETRIES)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or \
            not 0 <= attempts <= MAX_SDK_RETRIES:
        raise RegistrationError(f"{where}: retries.attempts must be 0 to {MAX_SDK_RETRIES}")
    try:
        return FunctionDefinition(
            id=fid, app_id=app_id, triggers=tuple(_trigger(where, t) for t in
                                                  raw.get("triggers") or ()),
            retry=RetryPolicy(attempts), flow=_flow(where, fid, raw), url=url)
    except DefinitionError as exc:
        raise RegistrationError(str(exc)) from None


def _trigger(where: str, raw: Any) -> Trigger:
    if not isinstance(raw, dict):
        raise RegistrationError(f"{where}: a trigger must be an object")
    if "event" in raw:
        return EventTrigger(str(raw["event"]), raw.get("expression") or None)
    if "cron" in raw:
        spec = str(raw["cron"]).strip()
        tz = "UTC"
        if spec.startswith(("TZ=", "CRON_TZ=")):
            zone, _, spec = spec.partition(" ")
            tz = zone.split("=", 1)[1]
        return CronTrigger(spec.strip(), tz)
    raise RegistrationError(f"{where}: a trigger needs event or cron, got {sorted(raw)}")


def _flow(where: str, fid: str, raw: dict[str, Any]) -> Any:
    def d(value: Any, field: str) -> timedelta:
        return duration(value, f"{where}: {field}")

    concurrency = []
    for item in raw.get("concurrency") or ():
        scope = item.get("scope", "fn")
        if scope not in ("fn", "env", "account"):
            raise RegistrationError(f"{where}: concurrency scope {scope!r} is not fn, env or "
                                    "account")
        concurrency.append(Concurrency(limit=item.get("limit"), key=item.get("key"),
                                       scope="fn" if scope == "fn" else "app"))
    throttle = raw.get("throttle")
    if throttle and throttle.get("burst", 1) not in (None, 0, 1):
        raise RegistrationError(f"{where}: throttle burst is not supported yet")
    rate = raw.get("rateLimit")
    debounce = raw.get("debounce")
    batch = raw.get("batchEvents")
    if batch and batch.get("if"):
        raise RegistrationError(f"{where}: batchEvents.if is not supported yet")
    cancels = []
    for item in raw.get("cancel") or ():
        if item.get("timeout"):
            raise RegistrationError(f"{where}: cancel timeout is not supported yet")
        cancels.append(CancelOn(event=item.get("event"), if_=item.get("if")))
    timeouts = raw.get("timeouts")
    return flow_definition(
        fid, concurrency=concurrency or None,
        throttle=Throttle(throttle.get("limit"), d(throttle.get("period"), "throttle.period"),
                          key=throttle.get("key")) if throttle else None,
        rate_limit=RateLimit(rate.get("limit"), d(rate.get("period"), "rateLimit.period"),
                             key=rate.get("key")) if rate else None,
        debounce=Debounce(d(debounce.get("period"), "debounce.period"), key=debounce.get("key"),
                          timeout=d(debounce["timeout"], "debounce.timeout")
                          if debounce.get("timeout") else None) if debounce else None,
        priority=Priority(run=raw["priority"].get("run")) if raw.get("priority") else None,
        batch=Batch(batch.get("maxSize"), d(batch.get("timeout"), "batchEvents.timeout"),
                    key=batch.get("key")) if batch else None,
        idempotency=raw.get("idempotency") or None,
        cancel_on=cancels or None,
        timeouts=Timeouts(
            start=d(timeouts["start"], "timeouts.start") if timeouts.get("start") else None,
            finish=d(timeouts["finish"], "timeouts.finish") if timeouts.get("finish")
            else None) if timeouts else None)
