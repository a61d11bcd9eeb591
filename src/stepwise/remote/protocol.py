"""The SDKs' call protocol: what stepwise sends to an app's serve URL to run one function, and
how the app's answer becomes engine outcomes.

A run's steps are stored under the SDK's hashed step ids, with the values the code gave (as a
Python function's are). The memo the SDK expects back is built from them by kind: a code step's
or an invoke's value as `{"data": ...}`, a wait's event (or null) and a sleep's null as they are,
a step failed for good as `{"error": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..engine import RunState
from ..engine.outcomes import (
    Invoke,
    Outcome,
    RunCompleted,
    RunFailed,
    SleepUntil,
    StepCompleted,
    StepFailed,
    WaitForEvent,
    WaitForSignal,
)
from ..errors import ErrorInfo
from ..events import event_json, sessions_meta
from ..payloads import PayloadError, dumps, loads, storable_text, unstorable
from ..status import StepStatus
from . import gateway
from .gateway import GatewayCall
from .registration import RegistrationError, duration

#: Opcodes this version understands; any other answer fails the run with a clear error.
SUPPORTED_OPS = ("StepRun", "StepError", "StepFailed", "StepPlanned", "Sleep", "WaitForEvent",
                 "WaitForSignal", "InvokeFunction", "Gateway", "AIGateway", "StepNotFound",
                 "RunComplete")
#: The longest signal name accepted (a wait's, or `POST /v1/signals`').
MAX_SIGNAL_CHARS = 1024
#: Keys of an SDK's error that are its serializer's markers, not the error's.
_SERIALIZER_KEYS = ("__serialized",)
#: Above this size of memoized step data and events, a call leaves them out and the SDK reads
#: them from `/v0/runs/{id}/actions` and `/batch` (`use_api`), keeping each call small.
USE_API_BYTES = 1024 * 1024
#: How long one call to an SDK app may take by default (seconds): an app that accepts the
#: connection and never answers fails the attempt after this, not after the 15-minute attempt
#: timeout. A function's own `timeouts.finish` shortens it.
DEFAULT_CALL_TIMEOUT_S = 300.0
#: How long a wait with no timeout lasts (the SDKs always send one).
DEFAULT_WAIT_MS = 7 * 24 * 3600 * 1000


class ProtocolError(ValueError):
    """The app answered something that is not the protocol."""


@dataclass
class CallState:
    """The memo map and completion order of one execution, updated as steps complete."""

    steps: dict[str, Any]
    stack: list[str]
    #: Failed attempts so far of steps being retried: the next attempt's number.
    attempts: dict[str, int]
    #: `ctx.attempt` of the next discovery call: the run's retry count when leased (a retried
    #: body or step), 0 once a step completed (Inngest counts attempts per queue item: a new
    #: step starts at 0, whatever the steps before it needed).
    attempt: int = 0
    #: Planned steps are running (race mode): a discovery call may only plan
    #: (`disable_immediate_execution`), as Inngest's executor forces while steps run.
    force_plan: bool = False


def memo_of(kind: str | None, output: str | None) -> Any:
    """A completed step's stored value as the SDK reads it back."""
    value = None if output is None else loads(output)
    if kind in ("run", "invoke"):
        return {"data": value}
    if kind == "wait" and isinstance(value, dict):
        return {**value, "user": value.get("user") or {}}  # the event as Inngest sends it
    return value  # a sleep's; or stored before kinds were, as the SDK reported it


def memo_error(error: Any) -> dict[str, Any]:
    """A step's error as the SDK reads it back (Inngest keeps name, message, stack, data and
    cause: the SDKs rebuild `error.cause` from it)."""
    if not isinstance(error, dict):
        return {"name": "Error", "message": str(error)}
    if error.get("name") == "InvokeTimeout":  # as Inngest says it, which the SDKs look for
        error = {**error, "name": "InngestInvokeTimeoutError",
                 "message": "Timed out waiting for invoked function to complete"}
    return {k: v for k, v in error.items() if k in ("name", "message", "stack", "data", "cause")}


def memo(state: RunState) -> CallState:
    steps: dict[str, Any] = {}
    done = sorted((s for s in state.steps.values()
                   if s["status"] in (StepStatus.completed, StepStatus.failed)),
                  key=lambda s: (s["seq"], s["ended_at"] or 0))
    for step in done:
        if step["status"] == StepStatus.completed:
            steps[step["id"]] = memo_of(step.get("kind"), step["output"])
        else:
            steps[step["id"]] = {"error": memo_error(loads(step["error"] or "{}"))}
    retrying = {s["id"]: int(s["attempts"]) for s in state.steps.values()
                if s["status"] == StepStatus.retrying}
    return CallState(steps, [s["id"] for s in done], retrying, int(state.run["retry"]))


def sdk_event(row: Any) -> dict[str, Any]:
    """A stored event as the SDKs read it: as functions see it (`events.event_json`), with
    Inngest's `user` and its sessions in `meta`, where it has some."""
    event = {**event_json(row), "user": {}}
    if row.get("meta"):
        event["meta"] = loads(row["meta"])
    return event


def run_events(state: RunState) -> list[dict[str, Any]]:
    """The run's events (a batch's, or its one event): `/v0/runs/{id}/batch` answers this."""
    return [sdk_event(e) for e in state.batch] or (
        [sdk_event(state.event)] if state.event is not None else [])


def request_body(state: RunState, calls: CallState, max_attempts: int, version: int,
                 step_id: str | None = None, checkpoint: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """The call's body. When the memo and events are large (over `USE_API_BYTES`), they are
    left out and `use_api` tells the SDK to fetch them (`/v0/runs/{id}/actions|batch`).
    `checkpoint`: what offers checkpointing (`remote.checkpoint.context`), added to the ctx
    of a discovery call that may run steps at once."""
    event = sdk_event(state.event) if state.event is not None else {
        "name": "inngest/function.invoked", "data": {}, "id": "", "ts": 0, "user": {}}
    events = run_events(state) or [event]
    steps = calls.steps
    use_api = len(dumps(steps, "memo")) + sum(len(e["data"]) for e in [
        *state.batch, *([state.event] if state.event is not None else [])]) > USE_API_BYTES
    if use_api:
        steps, events = {}, []
    # A planned step's own call runs that step only (as Inngest sends it).
    only_plan = step_id is not None or calls.force_plan
    ctx = {"run_id": state.run["id"], "step_id": step_id or "step",
           "attempt": calls.attempt if step_id is None else calls.attempts.get(step_id, 0),
           "max_attempts": max_attempts, "disable_immediate_execution": only_plan,
           "use_api": use_api,
           "stack": {"stack": list(calls.stack), "current": len(calls.stack)}}
    if checkpoint is not None and not only_plan:
        ctx.update(checkpoint)
    return {"event": event, "events": events, "steps": steps, "ctx": ctx,
            "version": version, "use_api": use_api}


def _error(raw: Any, fallback: str) -> ErrorInfo:
    """The SDK's error as it sent it (its `cause`, `code`, `data` kept: a later step or the
    failure handler reads them), with a name and a message made sure of."""
    if not isinstance(raw, dict):
        return {"name": "Error", "message": fallback}
    kept = {str(k): v for k, v in raw.items() if k not in _SERIALIZER_KEYS}
    kept["name"] = raw.get("name") if isinstance(raw.get("name"), str) and raw["name"] \
        else "Error"
    kept["message"] = raw.get("message") if isinstance(raw.get("message"), str) else fallback
    if kept.get("stack") is not None and not isinstance(kept["stack"], str):
        kept["stack"] = str(kept["stack"])  # a null stack stays null, as the SDK sent it
    if "cause" in kept and isinstance(kept["cause"], dict):
        kept["cause"] = {k: v for k, v in kept["cause"].items() if k not in _SERIALIZER_KEYS}
    return cast(ErrorInfo, kept)


def _retry_after_ms(value: str | None, now: int) -> int | None:
    """`Retry-After`: seconds, an ISO date (Python SDK) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp() * 1000) - now)


@dataclass(frozen=True)
class Planned:
    """The app planned steps to run in parallel: call it once for each (`stepId=<id>`), at
    their positions `seqs`; `others` are the outcomes of the answer's other opcodes (a sleep,
    a wait, an invoke beside them), applied with the planned steps' results."""

    step_ids: list[str]
    seqs: list[int]
    others: list[Outcome | GatewayCall]
    #: `parallelMode: "race"`: the app is asked again as each step completes, not once all
    #: have (its default, "wait").
    race: bool = False


def targeted(url: str, step_id: str) -> str:
    """The function's URL with `stepId` set: "step" (discovery), or one planned step."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "stepId"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("stepId", step_id)])))


def outcomes(status: int, headers: dict[str, str], body: bytes, calls: CallState,
             started: int, now: int, seq: int | None = None
             ) -> list[Outcome | GatewayCall] | Planned:
    """The app's answer to one call, as outcomes (one step's, or the run's end), or the steps
    it planned; a gateway step's request is left for the executor to make. `seq`: the step's
    position, for a targeted call."""
    no_retry = headers.get("x-inngest-no-retry", "").lower() == "true"
    retry_after = _retry_after_ms(headers.get("retry-after"), now)
    try:
        answer = loads(body) if body else None
    except PayloadError as exc:
        if status >= 300:
            answer = None
        else:
            raise ProtocolError(f"the app answered {status} with a body that is not JSON: "
                                f"{exc}") from None
    if status == 200:
        return [RunCompleted(dumps(answer, "function output"))]
    if status == 206:
        return _opcodes(answer, calls, started, now, seq, no_retry, retry_after)
    if status >= 400:
        error = _step_not_found(answer) or _error(answer, f"the app answered HTTP {status}")
        return [RunFailed(error, retriable=not no_retry and (status >= 500 or status == 429),
                          retry_after_ms=retry_after)]
    raise ProtocolError(f"the app answered HTTP {status}, which the protocol does not use")


#: At most this many opcodes in one answer (Inngest's own step limit is 1,000 per run).
MAX_OPS = 1000


def _step_not_found(answer: Any) -> ErrorInfo | None:
    """The JS SDK's answer when the step it was asked to run never came (`StepNotFound`: the
    code no longer reaches a step planned earlier, e.g. its id changed): a 500 naming the step
    and the new steps it found instead. Inngest's executor retries it as any failed call;
    here it is that failure, under that name and with the SDK's message."""
    if not isinstance(answer, dict) or not isinstance(answer.get("requestedStep"), str):
        return None
    message = answer.get("error")
    error: dict[str, Any] = {
        "name": "StepNotFound",
        "message": message if isinstance(message, str) and message else
        f"the app could not find step {answer['requestedStep']} to run",
        "step_id": answer["requestedStep"]}
    if isinstance(answer.get("foundSteps"), list):
        error["found_steps"] = answer["foundSteps"][:25]
        error["total_found_steps"] = answer.get("totalFoundSteps")
    return cast(ErrorInfo, error)


def _opcodes(answer: Any, calls: CallState, started: int, now: int, seq: int | None,
             no_retry: bool, retry_after: int | None) -> list[Outcome | GatewayCall] | Planned:
    """A 206: every opcode is handled on its own, as Inngest's executor does (a
    `Promise.all` of two invokes, a sleep beside planned steps, steps then `RunComplete`)."""
    ops: list[Any] = answer if isinstance(answer, list) else [answer]
    if not ops:
        raise ProtocolError("the app answered 206 with no opcode")
    if len(ops) > MAX_OPS:
        raise ProtocolError(f"the app answered {len(ops)} opcodes at once, over {MAX_OPS}")
    base = len(calls.stack) if seq is None else seq
    planned: list[str] = []
    seqs: list[int] = []
    others: list[Outcome | GatewayCall] = []
    ended: list[Outcome] = []
    race = False
    for i, op in enumerate(ops):
        if isinstance(op, dict) and op.get("op") == "StepPlanned":
            sid = op.get("id")
            if not isinstance(sid, str) or not sid or sid in planned:
                raise ProtocolError(f"planned steps need distinct ids, got {sid!r}"[:300])
            planned.append(sid)
            seqs.append(base + i)
            opts = op.get("opts")
            race = race or (isinstance(opts, dict) and opts.get("parallelMode") == "race")
        elif isinstance(op, dict) and op.get("op") == "RunComplete":  # the run's end (JS)
            ended.append(RunCompleted(dumps(op.get("data"), "function output")))
        else:
            others.append(_op(op, calls, started, now, base + i, no_retry, retry_after))
    if len(ended) > 1 or (ended and planned):
        raise ProtocolError("RunComplete must end an answer, once, with no step planned")
    if planned:
        return Planned(planned, seqs, others, race)
    return [*others, *ended]


def _op(op: Any, calls: CallState, started: int, now: int, seq: int, no_retry: bool = False,
        retry_after: int | None = None) -> Outcome | GatewayCall:
    if not isinstance(op, dict) or not isinstance(op.get("op"), str) or \
            not isinstance(op.get("id"), str) or not op["id"]:
        raise ProtocolError(f"an opcode must be an object with op and id, got {op!r}"[:300])
    kind, sid = op["op"], op["id"]
    name = step_name(op)
    opts = op.get("opts") or {}
    if not isinstance(opts, dict):
        raise ProtocolError(f"{kind} {sid}: opts must be an object, got {opts!r}"[:300])
    unstored = _unstorable_field(kind, sid, op, opts)
    if unstored is not None:
        raise ProtocolError(f"{kind} {sid!r}: {unstored} holds U+0000 or a lone surrogate, "
                            "which no database column stores"[:300])
    attempt = calls.attempts.get(sid, 0)
    if kind == "StepRun":
        return StepCompleted(sid, seq, dumps(op.get("data"), f"step {sid}"), started, now,
                             attempt, name=name)
    if kind in ("StepError", "StepFailed"):
        error = _error(op.get("error"), "step failed")
        error["step_id"] = sid
        return StepFailed(sid, seq, error, started, now, attempt,
                          retriable=kind == "StepError" and not no_retry,
                          retry_after_ms=retry_after, name=name)
    if kind == "Sleep":
        return SleepUntil(sid, seq, _sleep_until(opts.get("duration") or op.get("name"), now),
                          started, name=name)
    if kind == "WaitForEvent":
        event = opts.get("event") or op.get("name")
        if not isinstance(event, str) or not event:
            raise ProtocolError("WaitForEvent without an event name")
        timeout = opts.get("timeout")
        expires = now + (int(duration(timeout, "WaitForEvent timeout").total_seconds() * 1000)
                         if timeout else DEFAULT_WAIT_MS)
        return WaitForEvent(sid, seq, event, expires, started, if_=opts.get("if") or None,
                            name=name)
    if kind == "WaitForSignal":
        signal = opts.get("signal")
        if not isinstance(signal, str) or not signal or len(signal) > MAX_SIGNAL_CHARS:
            raise ProtocolError(f"WaitForSignal needs a signal name (1 to {MAX_SIGNAL_CHARS} "
                                f"characters), got {signal!r}"[:300])
        timeout = opts.get("timeout")
        if not timeout:
            raise ProtocolError("WaitForSignal needs a timeout")
        conflict = opts.get("conflict")
        if conflict not in (None, "replace", "fail"):
            raise ProtocolError(f"WaitForSignal conflict must be replace or fail, got "
                                f"{conflict!r}"[:300])
        expires = now + int(duration(timeout, "WaitForSignal timeout").total_seconds() * 1000)
        return WaitForSignal(sid, seq, signal, expires, started, replace=conflict == "replace",
                             name=name)
    if kind == "InvokeFunction":
        return replace(_invoke(sid, seq, opts, started, now), name=name)
    if kind in ("Gateway", "AIGateway"):  # step.fetch, step.ai.infer: the server calls
        return gateway.parse(kind, sid, seq, opts, started, attempt, name)
    if kind == "StepNotFound":
        return RunFailed(_step_not_found({**op, "requestedStep": sid}) or
                         {"name": "StepNotFound", "message": f"step {sid} not found"},
                         retriable=not no_retry, retry_after_ms=retry_after)
    raise ProtocolError(f"opcode {kind} is not supported yet (supported: "
                        f"{', '.join(SUPPORTED_OPS)})")


def step_name(op: dict[str, Any]) -> str | None:
    """The code's name for the step (its id is a hash): `displayName`, else `userland.id`;
    the n-th repeat of an id gets `:<n>`, as its hash does."""
    raw = op.get("userland")
    userland: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = op.get("displayName") or userland.get("id")
    if not isinstance(name, str) or not name:
        return None
    index = userland.get("index")
    if isinstance(index, int) and index > 0 and name == userland.get("id"):
        name = f"{name}:{index}"
    return storable_text(name[:200])  # shown only: U+0000 reads as U+FFFD


def _unstorable_field(kind: str, sid: str, op: dict[str, Any], opts: dict[str, Any]
                      ) -> str | None:
    """The field of an opcode that is stored as plain text (the step's id, what a wait
    waits for, the function an invoke calls) and holds what no text column can, if any."""
    fields = {"id": sid, "opts.event": opts.get("event"), "opts.if": opts.get("if"),
              "opts.signal": opts.get("signal"), "opts.function_id": opts.get("function_id")}
    if kind == "WaitForEvent":
        fields["name"] = op.get("name")
    return next((field for field, value in fields.items()
                 if isinstance(value, str) and unstorable(value)), None)


def _invoke(sid: str, seq: int, opts: Any, started: int, now: int) -> Invoke:
    """`step.invoke`: the function by its full id (`<app>-<fn>`, any app), the payload's
    `data` as the invoked run's event data, an optional timeout (a duration)."""
    function_id = opts.get("function_id")
    if not isinstance(function_id, str) or not function_id:
        raise ProtocolError(f"InvokeFunction needs opts.function_id, got {function_id!r}"[:300])
    payload = opts.get("payload") or {}
    data = payload.get("data") if isinstance(payload, dict) else None
    if data is not None and not isinstance(data, dict):
        raise ProtocolError(f"InvokeFunction payload.data must be an object, got "
                            f"{type(data).__name__}")
    timeout = opts.get("timeout")
    try:
        expires = None if not timeout else now + int(
            duration(timeout, "InvokeFunction timeout").total_seconds() * 1000)
        meta = sessions_meta(payload.get("meta") if isinstance(payload, dict) else None,
                             "InvokeFunction payload")
        return Invoke(sid, seq, function_id, dumps(data or {}, "invoke data"), started,
                      expires, meta=None if meta is None else dumps(meta, "invoke meta"))
    except (RegistrationError, PayloadError, ValueError) as exc:
        raise ProtocolError(str(exc)) from None


def _sleep_until(value: Any, now: int) -> int:
    """A Sleep's end: an ISO timestamp (Python SDK) or a duration such as "2s" (JS SDK)."""
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"Sleep without a time or duration, got {value!r}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            return now + int(duration(value, "Sleep").total_seconds() * 1000)
        except RegistrationError as exc:
            raise ProtocolError(str(exc)) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
