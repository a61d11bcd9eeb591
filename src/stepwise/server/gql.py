"""Inngest's dev-server read API, as the SDKs' own integration tests and teams' Inngest test
setups query it: GraphQL at `/v0/gql` (events, the event stream, a run with its trace spans, a
span's output, a run's trigger) and `GET /dev` (the registered functions), so those setups run
against `stepwise dev` unchanged. Not part of this API's own schema.

The schema is a subset of Inngest's (`pkg/coreapi/gql.*.graphql`), each type and field with
Inngest's name, type and meaning; graphql-core parses, validates and executes queries. Values
are stepwise's own runs, steps and events: a run's trace is its steps in order (a retried
step's attempts as its children), then, once the run ended, `Finalization` holding the run's
output. Output ids are opaque handles of a run, a step and an attempt. Outside dev mode the
access gate asks for the API key, as for the management API; `GET /dev` answers only in dev
mode, as Inngest's answers only in its dev server."""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.metadata
import json
import re
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    build_schema,
    execute,
    parse,
    validate,
)

from ..engine import NotFound
from ..engine.leasing import SDK_TIMER
from ..payloads import PayloadError, dumps, loads
from ..remote.protocol import run_events
from ..status import RunStatus, StepStatus
from ..storage.rows import EventRow, RunDetail, RunRow, StepRow
from .convert import iso, stored
from .errors import ApiError
from .inputs import read_json
from .models import JSONText
from .state import Server, ServerDep

router = APIRouter(default_response_class=JSONText, include_in_schema=False)

SDL = """
scalar Time
scalar ULID
scalar UUID
scalar Bytes
scalar Unknown
scalar SpanMetadataKind
scalar SpanMetadataScope
scalar SpanMetadataValues

type Query {
  stream(query: StreamQuery!): [StreamItem!]!
  event(query: EventQuery!): Event
  events(query: EventsQuery!): [Event!]
  eventV2(id: ULID!): EventV2!
  functions: [Function!]
  functionBySlug(query: FunctionQuery!): Function
  run(runID: String!): FunctionRunV2
  runTrace(runID: String!): RunTraceSpan!
  runTraceSpanOutputByID(outputID: String!): RunTraceSpanOutput!
  runTrigger(runID: String!): RunTraceTrigger!
}

input StreamQuery {
  after: ID
  before: ID
  limit: Int! = 20
  includeInternalEvents: Boolean
}
input EventQuery { workspaceId: ID! = "local", eventId: ID! }
input EventsQuery { workspaceId: ID! = "local", lastEventId: ID }
input FunctionQuery { workspaceId: ID! = "local", functionSlug: String! }

enum StreamType { EVENT CRON }
type StreamItem {
  id: ID!
  trigger: String!
  type: StreamType!
  createdAt: Time!
  runs: [FunctionRun]
  inBatch: Boolean!
}

enum EventStatus { RUNNING COMPLETED PAUSED FAILED PARTIALLY_FAILED NO_FUNCTIONS }
type Event {
  id: ULID!
  externalID: String
  name: String
  createdAt: Time
  payload: String
  status: EventStatus
  pendingRuns: Int
  totalRuns: Int
  raw: String
  functionRuns: [FunctionRun!]
}
type EventV2 {
  id: ULID!
  idempotencyKey: String
  name: String!
  occurredAt: Time!
  raw: String!
  receivedAt: Time!
  runs: [FunctionRunV2!]!
  version: String
}

enum FunctionTriggerTypes { EVENT CRON }
type FunctionTrigger { type: FunctionTriggerTypes!, value: String!, condition: String }
type Function {
  id: String!
  name: String!
  slug: String!
  config: String!
  concurrency: Int!
  triggers: [FunctionTrigger!]
  url: String!
  appID: String!
}

enum FunctionRunStatus { COMPLETED FAILED CANCELLED RUNNING QUEUED SKIPPED }
type FunctionRun {
  id: ID!
  functionID: String!
  function: Function
  event: Event
  events: [Event!]!
  status: FunctionRunStatus
  startedAt: Time
  finishedAt: Time
  output: String
  eventID: ID!
  cron: String
}
type FunctionRunV2 {
  id: ULID!
  appID: UUID!
  functionID: UUID!
  function: Function!
  traceID: String!
  queuedAt: Time!
  startedAt: Time
  endedAt: Time
  status: FunctionRunStatus!
  sourceID: String
  triggerIDs: [ULID!]!
  eventName: String
  isBatch: Boolean!
  cronSchedule: String
  output: Bytes
  trace(preview: Boolean): RunTraceSpan
  hasAI: Boolean!
}

enum RunTraceSpanStatus { FAILED QUEUED RUNNING COMPLETED WAITING CANCELLED SKIPPED }
enum StepOp { INVOKE RUN SLEEP WAIT_FOR_EVENT AI_GATEWAY WAIT_FOR_SIGNAL }
type SpanMetadata {
  scope: SpanMetadataScope!
  kind: SpanMetadataKind!
  values: SpanMetadataValues!
  updatedAt: Time!
}
type RunTraceSpan {
  appID: UUID!
  functionID: UUID!
  runID: ULID!
  spanID: String!
  traceID: String!
  groupID: String
  name: String!
  status: RunTraceSpanStatus!
  attempts: Int
  duration: Int
  outputID: String
  queuedAt: Time!
  scheduledAt: Time
  startedAt: Time
  endedAt: Time
  childrenSpans: [RunTraceSpan!]!
  stepOp: StepOp
  stepID: String
  stepType: String!
  isRoot: Boolean!
  parentSpanID: String
  isUserland: Boolean!
  debugPaused: Boolean!
  metadata: [SpanMetadata!]!
}
type StepError { message: String!, name: String, stack: String, cause: Unknown }
type RunTraceSpanOutput { input: Bytes, data: Bytes, error: StepError }
type RunTraceTrigger {
  eventName: String
  IDs: [ULID!]!
  payloads: [Bytes!]!
  timestamp: Time!
  isBatch: Boolean!
  batchID: ULID
  cron: String
}
"""

SCHEMA: GraphQLSchema = build_schema(SDL)

#: Inngest's dev server lists this many events (`cqrs.MaxEvents`).
EVENTS_LISTED = 51
#: The most items one `stream` query answers.
MAX_STREAM = 1000
#: The most runs read at once for a page of the stream (beyond it, each event's on its own).
_STREAM_RUNS = 5000

Row = dict[str, Any]
_RUN_STATUS = {RunStatus.running: "RUNNING", RunStatus.sleeping: "RUNNING",
               RunStatus.waiting: "RUNNING", RunStatus.completed: "COMPLETED",
               RunStatus.failed: "FAILED", RunStatus.cancelled: "CANCELLED",
               RunStatus.skipped: "SKIPPED"}
_STEP_STATUS = {StepStatus.completed: "COMPLETED", StepStatus.failed: "FAILED",
                StepStatus.retrying: "QUEUED", StepStatus.sleeping: "WAITING",
                StepStatus.waiting: "WAITING", StepStatus.invoking: "RUNNING"}
_STEP_OP = {"sleep": "SLEEP", "wait": "WAIT_FOR_EVENT", "invoke": "INVOKE"}
_SDK_STEP_ID = re.compile(r"[0-9a-f]{40}")
_REPEAT = re.compile(r"(.+):([1-9][0-9]*)")
#: Longer than any output id this server gives (a run id and a step id of at most a few
#: hundred characters each).
_MAX_OUTPUT_ID = 4096


def run_status(run: RunRow) -> str:
    """A run's status as Inngest's FunctionRunStatus: queued until it first starts (a run
    queued again for a retry is still running)."""
    status = RunStatus(run["status"])
    if status == RunStatus.queued:
        return "RUNNING" if run["started_at"] is not None else "QUEUED"
    return _RUN_STATUS[status]


def _span_status(run: RunRow) -> str:
    status = run_status(run)
    return "WAITING" if run["status"] in (RunStatus.sleeping, RunStatus.waiting) else status


def function_name(definition: Row) -> str:
    """A function's name as the SDKs default it: its id within its app (stepwise keeps an SDK
    function's full id, `<app>-<id>`, and no display name besides)."""
    fid, app_id = str(definition["id"]), str(definition["app_id"])
    return fid[len(app_id) + 1:] if fid.startswith(app_id + "-") and len(fid) > len(app_id) + 1 \
        else fid


def step_name(step: StepRow, names: set[str]) -> str:
    """The name Inngest shows for a step: the code's name without the `:n` stepwise adds to
    the n-th repeat of an SDK step's id (the SDKs send the same display name for each)."""
    name = step.get("name") or step["id"]
    repeat = _REPEAT.fullmatch(name)
    if repeat and _SDK_STEP_ID.fullmatch(step["id"]) and repeat.group(1) in names:
        return repeat.group(1)
    return name


def output_id(run_id: str, step_id: str | None = None, attempt: int | None = None) -> str:
    """An opaque handle of what `runTraceSpanOutputByID` reads: a run's output, a step's, or
    one failed attempt's error."""
    raw = json.dumps([run_id, step_id, attempt], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_output_id(value: str) -> tuple[str, str | None, int | None]:
    raw: Any = None
    if len(value) <= _MAX_OUTPUT_ID:
        with contextlib.suppress(ValueError, binascii.Error, RecursionError):
            raw = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], str)
            and (raw[1] is None or isinstance(raw[1], str))
            and (raw[2] is None or type(raw[2]) is int)):
        raise GraphQLError(f"outputID {value[:100]!r} is not one this server gave")
    return raw[0], raw[1], raw[2]


def step_error(text: str | None) -> Row | None:
    """A stored error as Inngest's StepError (`message` is never null)."""
    if text is None:
        return None
    value = stored(text)
    if not isinstance(value, dict):
        return {"message": str(value), "name": None, "stack": None, "cause": None}
    message = value.get("message")
    return {"message": message if isinstance(message, str) else dumps(message, "message"),
            "name": value.get("name") if isinstance(value.get("name"), str) else None,
            "stack": value.get("stack") if isinstance(value.get("stack"), str) else None,
            "cause": value.get("cause")}


def _duration(started: int | None, ended: int | None) -> int | None:
    return ended - started if started is not None and ended is not None else None


class Reads:
    """One query's reads, each made once: the functions, whole runs, events' runs."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._functions: dict[tuple[str, str], Row] | None = None
        self._runs: dict[str, RunDetail | None] = {}
        self._events: dict[str, tuple[EventRow, list[RunRow]] | None] = {}

    async def functions(self) -> dict[tuple[str, str], Row]:
        if self._functions is None:
            rows = await self.server.engine.list_functions()
            self._functions = {(str(f["app_id"]), str(f["id"])): f for f in rows}
        return self._functions

    async def function_of(self, run: RunRow) -> Row:
        """The run's function (by its ids alone when no longer registered)."""
        found = (await self.functions()).get((run["app_id"], run["function_id"]))
        return function_out(found or {"id": run["function_id"], "app_id": run["app_id"]})

    async def run(self, run_id: str) -> RunDetail | None:
        if run_id not in self._runs:
            try:
                self._runs[run_id] = await self.server.engine.get_run(run_id)
            except NotFound:
                self._runs[run_id] = None
        return self._runs[run_id]

    async def event(self, event_id: str) -> tuple[EventRow, list[RunRow]] | None:
        """An event and the runs it started."""
        if event_id not in self._events:
            try:
                self._events[event_id] = await self.server.engine.get_event(event_id)
            except NotFound:
                self._events[event_id] = None
        return self._events[event_id]


# --- functions --------------------------------------------------------------------------------

def _inngest_trigger(trigger: Row) -> Row:
    """A trigger as the SDKs and Inngest write it."""
    if "cron" in trigger:
        tz = trigger.get("tz") or "UTC"
        return {"cron": trigger["cron"] if tz == "UTC" else f"TZ={tz} {trigger['cron']}"}
    out = {"event": trigger["event"]}
    if trigger.get("expression"):
        out["expression"] = trigger["expression"]
    return out


def function_out(definition: Row) -> Row:
    triggers = [_inngest_trigger(t) for t in definition.get("triggers", [])]
    concurrency = definition.get("flow", {}).get("concurrency") or []
    return {
        "id": definition["id"], "name": function_name(definition), "slug": definition["id"],
        "config": dumps({k: v for k, v in definition.items() if k != "updated_at"}, "config"),
        "concurrency": int(concurrency[0].get("limit") or 0) if concurrency else 0,
        "triggers": [{"type": "CRON", "value": t["cron"], "condition": None} if "cron" in t
                     else {"type": "EVENT", "value": t["event"],
                           "condition": t.get("expression")} for t in triggers],
        "url": definition.get("url") or "", "appID": definition["app_id"]}


def dev_function(definition: Row) -> Row:
    """A function as `GET /dev` lists it (Inngest's `inngest.Function`): its one step is the
    URL that runs it (none for a Python function, which a worker runs)."""
    url = definition.get("url")
    return {"id": definition["id"], "name": function_name(definition),
            "slug": definition["id"], "appID": definition["app_id"],
            "triggers": [_inngest_trigger(t) for t in definition.get("triggers", [])],
            "steps": [{"id": "step", "name": "step", "uri": url}] if url else []}


# --- runs -----------------------------------------------------------------------------------

def _lazy(make: Callable[[], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A field read only when the query asks for it."""
    return lambda _info, **_args: make()


def function_run(reads: Reads, run: RunRow) -> Row:
    """A run as Inngest's (older) FunctionRun, as the stream and events list them."""
    async def output() -> str | None:
        whole = await reads.run(run["id"])
        return None if whole is None else _run_output(whole)

    async def event() -> Row | None:
        found = await reads.event(run["event_id"]) if run["event_id"] else None
        return None if found is None else event_out(reads, found[0])

    async def events() -> list[Row]:
        found = await event()
        return [] if found is None else [found]

    return {"id": run["id"], "functionID": run["function_id"],
            "function": _lazy(lambda: reads.function_of(run)), "event": _lazy(event),
            "events": _lazy(events), "status": run_status(run),
            "startedAt": iso(run["started_at"]), "finishedAt": iso(run["ended_at"]),
            "output": _lazy(output), "eventID": run["event_id"] or "", "cron": None}


def _run_output(run: RunRow) -> str | None:
    """Inngest's run `output` (`Bytes`: JSON text): the output's, or the error's for a failed
    run."""
    return run["error"] if run["status"] == RunStatus.failed else run["output"]


def function_run_v2(reads: Reads, run: RunRow) -> Row:
    async def whole() -> RunDetail | None:
        return await reads.run(run["id"])

    async def output() -> str | None:
        found = await whole()
        return None if found is None else _run_output(found)

    async def trace() -> Row | None:
        found = await whole()
        return None if found is None else await _trace(reads, found)

    async def event_name() -> str | None:
        found = await whole()
        event = None if found is None else found["event"]
        return None if event is None else event["name"]

    return {"id": run["id"], "appID": run["app_id"], "functionID": run["function_id"],
            "function": _lazy(lambda: reads.function_of(run)), "traceID": run["id"],
            "queuedAt": iso(run["created_at"]), "startedAt": iso(run["started_at"]),
            "endedAt": iso(run["ended_at"]), "status": run_status(run),
            "sourceID": run["parent_run_id"],
            "triggerIDs": [run["event_id"]] if run["event_id"] else [],
            "eventName": _lazy(event_name), "isBatch": False, "cronSchedule": None,
            "output": _lazy(output), "trace": _lazy(trace), "hasAI": False}


def _span(run: RunRow, span_id: str, name: str, status: str, **fields: Any) -> Row:
    return {"appID": run["app_id"], "functionID": run["function_id"], "runID": run["id"],
            "spanID": span_id, "traceID": run["id"], "groupID": None, "name": name,
            "status": status, "attempts": None, "duration": None, "outputID": None,
            "queuedAt": iso(run["created_at"]), "scheduledAt": None, "startedAt": None,
            "endedAt": None, "childrenSpans": [], "stepOp": None, "stepID": None,
            "stepType": "", "isRoot": False, "parentSpanID": run["id"], "isUserland": False,
            "debugPaused": False, "metadata": [], **fields}


def _step_span(run: RunDetail, step: StepRow, names: set[str]) -> Row:
    """A step, and when it failed an attempt, each attempt as a child: the failed ones from
    the run's failures, then the one that succeeded."""
    status = StepStatus(step["status"])
    ended = step["ended_at"] if status in (StepStatus.completed, StepStatus.failed) else None
    op = _STEP_OP.get(step.get("kind") or "run", "RUN")
    span_id = f"{run['id']}:{step['seq']}"
    has_value = step["output"] is not None or step["error"] is not None
    failures = [f for f in run["failures"] if f["step_id"] == step["id"]]
    attempts = [_span(run, f"{span_id}:{f['attempt']}", f"Attempt {f['attempt'] - 1}",
                      "FAILED", attempts=f["attempt"] - 1, startedAt=iso(f["started_at"]),
                      endedAt=iso(f["ended_at"]),
                      duration=_duration(f["started_at"], f["ended_at"]),
                      outputID=output_id(run["id"], step["id"], f["attempt"]),
                      stepOp=op, stepID=step["id"], stepType=op, parentSpanID=span_id)
                for f in failures]
    if attempts and status == StepStatus.completed:
        last = step["attempts"] - 1
        attempts.append(_span(run, f"{span_id}:{last + 1}", f"Attempt {last}", "COMPLETED",
                              attempts=last, endedAt=iso(ended),
                              outputID=output_id(run["id"], step["id"]), stepOp=op,
                              stepID=step["id"], stepType=op, parentSpanID=span_id))
    return _span(run, span_id, step_name(step, names), _STEP_STATUS[status],
                 attempts=max(step["attempts"] - 1, 0), startedAt=iso(step["started_at"]),
                 endedAt=iso(ended), duration=_duration(step["started_at"], ended),
                 outputID=output_id(run["id"], step["id"]) if has_value else None,
                 childrenSpans=attempts, stepOp=op, stepID=step["id"], stepType=op)


def run_trace(run: RunDetail, name: str) -> Row:
    """A run's trace: the run (named for its function), its steps in order, then (once it
    completed or failed) the `Finalization` span with the run's output."""
    names = {s.get("name") or s["id"] for s in run["steps"]}
    children = [_step_span(run, s, names) for s in run["steps"]]
    ended = run["status"] in (RunStatus.completed, RunStatus.failed)
    status = _span_status(run)
    if ended:
        last = max((s["ended_at"] for s in run["steps"]
                    if s["status"] in (StepStatus.completed, StepStatus.failed)
                    and s["ended_at"] is not None), default=run["started_at"])
        children.append(_span(run, f"{run['id']}:end", "Finalization", status, attempts=0,
                              startedAt=iso(last), endedAt=iso(run["ended_at"]),
                              duration=_duration(last, run["ended_at"]),
                              outputID=output_id(run["id"]), stepType="FINALIZATION"))
    return _span(run, run["id"], name, status, isRoot=True, parentSpanID=None,
                 startedAt=iso(run["started_at"]), endedAt=iso(run["ended_at"]),
                 duration=_duration(run["started_at"], run["ended_at"]),
                 outputID=output_id(run["id"]) if ended else None, childrenSpans=children)


async def _trace(reads: Reads, run: RunDetail) -> Row:
    return run_trace(run, (await reads.function_of(run))["name"])


def span_output(run: RunDetail, step_id: str | None, attempt: int | None) -> Row:
    """What an output id points at: the run's output or error, a step's, or one failed
    attempt's error."""
    if step_id is None:
        failed = run["status"] == RunStatus.failed
        return {"input": None, "data": None if failed else (run["output"] or "null"),
                "error": step_error(run["error"]) if failed else None}
    if attempt is not None:
        failure = next((f for f in run["failures"]
                        if f["step_id"] == step_id and f["attempt"] == attempt), None)
        if failure is None:
            raise GraphQLError(f"attempt {attempt} of step {step_id!r} not found")
        return {"input": None, "data": None, "error": step_error(failure["error"])}
    step = next((s for s in run["steps"] if s["id"] == step_id), None)
    if step is None:
        raise GraphQLError(f"step {step_id!r} of run {run['id']} not found")
    if step["status"] == StepStatus.completed:
        return {"input": None, "data": step["output"] or "null", "error": None}
    return {"input": None, "data": None, "error": step_error(step["error"])}


# --- events ---------------------------------------------------------------------------------

#: The events of cron runs (an SDK function's, a Python function's), which carry the cron
#: expression; the stream shows them as Inngest shows cron runs, whatever the filter.
_CRON_EVENTS = (SDK_TIMER, "stepwise/cron")


def _cron(event: EventRow) -> str | None:
    if event["name"] not in _CRON_EVENTS:
        return None
    cron = stored(event["data"])
    return str(cron.get("cron")) if isinstance(cron, dict) and cron.get("cron") else None


def _internal(event: EventRow) -> bool:
    """An event Inngest's stream leaves out unless asked: its own lifecycle events."""
    return event["name"].startswith("inngest/") and _cron(event) is None


def event_out(reads: Reads, event: EventRow) -> Row:
    """An event as Inngest's (older) Event: `payload` is its data, `raw` the whole event."""
    async def runs() -> list[RunRow]:
        found = await reads.event(event["id"])
        return [] if found is None else found[1]

    async def function_runs() -> list[Row]:
        return [function_run(reads, r) for r in await runs()]

    async def status() -> str:
        statuses = [r["status"] for r in await runs()]
        failed = statuses.count(RunStatus.failed)
        if not statuses:
            return "NO_FUNCTIONS"
        if failed:
            return "FAILED" if failed == len(statuses) else "PARTIALLY_FAILED"
        if any(s in (RunStatus.sleeping, RunStatus.waiting) for s in statuses):
            return "PAUSED"
        if any(s in (RunStatus.queued, RunStatus.running) for s in statuses):
            return "RUNNING"
        return "COMPLETED"

    async def pending() -> int:
        return sum(r["status"] == RunStatus.running for r in await runs())

    async def total() -> int:
        return len(await runs())

    return {"id": event["id"], "externalID": event["id"], "name": event["name"],
            "createdAt": iso(event["ts"]), "payload": event["data"], "status": _lazy(status),
            "pendingRuns": _lazy(pending), "totalRuns": _lazy(total),
            "raw": dumps(_raw(event), "raw"), "functionRuns": _lazy(function_runs)}


def _raw(event: EventRow) -> Row:
    return {"data": loads(event["data"]), "id": event["id"], "name": event["name"],
            "ts": event["ts"], "v": None}


def event_v2(reads: Reads, event: EventRow) -> Row:
    async def runs() -> list[Row]:
        found = await reads.event(event["id"])
        return [] if found is None else [function_run_v2(reads, r) for r in found[1]]

    received = event.get("received_at", event["ts"])
    return {"id": event["id"], "idempotencyKey": event["id"], "name": event["name"],
            "occurredAt": iso(event["ts"]), "raw": dumps(_raw(event), "raw"),
            "receivedAt": iso(received), "runs": _lazy(runs), "version": None}


async def _stream(reads: Reads, query: Row) -> list[Row]:
    """The newest events (before `before`, after `after`), each with the runs it started."""
    limit = max(0, min(int(query.get("limit", 20)), MAX_STREAM))
    internal = bool(query.get("includeInternalEvents"))
    engine = reads.server.engine
    filters: Row = {}
    if query.get("after"):
        after = await reads.event(str(query["after"]))
        if after is None:
            raise GraphQLError(f"event {query['after']!r} not found")
        filters["since"] = after[0].get("received_at", after[0]["ts"])
    cursor = str(query["before"]) if query.get("before") else None
    events: list[EventRow] = []
    while len(events) < limit:
        page = await engine.list_events({**filters, "before": cursor}, limit)
        if query.get("after"):
            page = [e for e in page if e["id"] != query["after"]]
        events += [e for e in page if internal or not _internal(e)]
        if len(page) < limit:
            break
        cursor = page[-1]["id"]
    events = events[:limit]
    runs = await _runs_of(reads, events)
    return [_stream_item(reads, e, runs.get(e["id"], [])) for e in events]


def _stream_item(reads: Reads, event: EventRow, runs: list[RunRow]) -> Row:
    cron = _cron(event)
    return {"id": event["id"], "trigger": cron or event["name"],
            "type": "EVENT" if cron is None else "CRON",
            "createdAt": iso(event.get("received_at", event["ts"])),
            "runs": [{**function_run(reads, r), "cron": cron} for r in runs],
            "inBatch": False}


async def _runs_of(reads: Reads, events: list[EventRow]) -> dict[str, list[RunRow]]:
    """The runs the events started: read together (runs start when their event is received,
    so after the oldest one's arrival), or one event at a time when there are too many."""
    if not events:
        return {}
    since = min(e.get("received_at", e["ts"]) for e in events)
    rows = await reads.server.engine.list_runs({"since": since}, _STREAM_RUNS, preview=0)
    by_event: dict[str, list[RunRow]] = {}
    if len(rows) < _STREAM_RUNS:
        for row in reversed(rows):  # oldest first
            if row["event_id"] is not None:
                by_event.setdefault(row["event_id"], []).append(row)
        return by_event
    for event in events:
        found = await reads.event(event["id"])
        by_event[event["id"]] = [] if found is None else found[1]
    return by_event


# --- the query root -------------------------------------------------------------------------

class Root:
    """The `Query` type's fields."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    async def stream(self, _info: Any, query: Row) -> list[Row]:
        return await _stream(self.reads, query)

    async def event(self, _info: Any, query: Row) -> Row | None:
        found = await self.reads.event(str(query["eventId"]))
        return None if found is None else event_out(self.reads, found[0])

    async def events(self, _info: Any, query: Row) -> list[Row]:
        rows = await self.reads.server.engine.list_events({}, EVENTS_LISTED)
        return [event_out(self.reads, e) for e in rows]

    async def eventV2(self, _info: Any, id: str) -> Row:
        found = await self.reads.event(id)
        if found is None:
            raise GraphQLError(f"event {id!r} not found")
        return event_v2(self.reads, found[0])

    async def functions(self, _info: Any) -> list[Row]:
        return [function_out(f) for f in (await self.reads.functions()).values()]

    async def functionBySlug(self, _info: Any, query: Row) -> Row | None:
        slug = query["functionSlug"]
        found = next((f for f in (await self.reads.functions()).values() if f["id"] == slug),
                     None)
        return None if found is None else function_out(found)

    async def run(self, _info: Any, runID: str) -> Row | None:
        found = await self.reads.run(runID)
        return None if found is None else function_run_v2(self.reads, found)

    async def runTrace(self, _info: Any, runID: str) -> Row:
        return await _trace(self.reads, await self._run(runID))

    async def runTraceSpanOutputByID(self, _info: Any, outputID: str
                                     ) -> Row:
        run_id, step_id, attempt = _read_output_id(outputID)
        return span_output(await self._run(run_id), step_id, attempt)

    async def runTrigger(self, _info: Any, runID: str) -> Row:
        state = await self.reads.server.engine.load(runID)
        if state is None:
            raise GraphQLError(f"run {runID} not found")
        events = run_events(state)  # as the SDK read them
        first = events[0] if events else None
        return {"eventName": None if first is None else first["name"],
                "IDs": [e["id"] for e in events],
                "payloads": [dumps(e, "payload") for e in events],
                "timestamp": iso(first["ts"] if first else state.run["created_at"]),
                "isBatch": bool(state.batch), "batchID": None,
                "cron": None if state.event is None else _cron(state.event)}

    async def _run(self, run_id: str) -> RunDetail:
        found = await self.reads.run(run_id)
        if found is None:
            raise GraphQLError(f"run {run_id} not found")
        return found


# --- HTTP -------------------------------------------------------------------------------------

async def run_query(server: Server, body: Any) -> tuple[int, Row]:
    """Answer one GraphQL request body (`{"query", "variables"?, "operationName"?}`): 200
    with `data` (and `errors` for fields that failed, such as a run not found), or 422 when
    the query cannot be read, is not valid against the schema or its variables are wrong
    (as Inngest's server answers)."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ApiError(400, 'the body must be {"query": "...", "variables": {...}}')
    variables = body.get("variables")
    operation = body.get("operationName")
    if variables is not None and not isinstance(variables, dict):
        raise ApiError(400, "variables must be an object")
    if operation is not None and not isinstance(operation, str):
        raise ApiError(400, "operationName must be a string")
    try:
        document = parse(body["query"])
    except GraphQLError as exc:
        return 422, _refusal([exc])
    invalid = validate(SCHEMA, document)
    if invalid:
        return 422, _refusal(invalid)
    result = execute(SCHEMA, document, root_value=Root(Reads(server)),
                     variable_values=variables, operation_name=operation)
    done: ExecutionResult = await result if isawaitable(result) else result
    if done.data is None and done.errors and all(e.path is None for e in done.errors):
        return 422, _refusal(list(done.errors))  # the variables, not a field, were wrong
    return 200, dict(done.formatted)


def _refusal(errors: list[GraphQLError]) -> Row:
    """GraphQL's error shape, with this API's `error` (the first message) beside it."""
    return {"errors": [e.formatted for e in errors], "data": None,
            "error": errors[0].message}


@router.post("/v0/gql")
async def gql_post(request: Request, server: ServerDep) -> JSONResponse:
    status, answer = await run_query(server, await read_json(request,
                                                             server.limits.request_bytes))
    return JSONText(answer, status)


@router.get("/v0/gql")
async def gql_get(request: Request, server: ServerDep) -> JSONResponse:
    """A query in the URL (`?query=...&variables=<JSON>&operationName=...`), as GraphQL over
    HTTP allows for reads."""
    params = request.query_params
    body: Row = {"query": params.get("query"), "operationName": params.get("operationName")}
    if params.get("variables"):
        try:
            body["variables"] = loads(params["variables"])
        except PayloadError as exc:
            raise ApiError(400, f"variables is not valid JSON: {exc}") from None
    status, answer = await run_query(server, body)
    return JSONText(answer, status)


@router.get("/dev")
async def dev_info(server: ServerDep) -> JSONResponse:
    """What Inngest's dev server says of itself, with the registered functions; its SDK tests
    wait on this. Only a dev server answers it (Inngest's self-hosted server answers 404)."""
    if server.access.server_kind != "dev":
        raise ApiError(404, "GET /dev is answered by `stepwise dev` only")
    functions = await server.engine.list_functions()
    apps = await server.engine.list_apps()
    return JSONText({
        "version": f"stepwise {importlib.metadata.version('stepwise-engine')}", "authed": False,
        "startOpts": {"urls": [a["url"] for a in apps if a.get("url")]},
        "functions": [dev_function(f) for f in functions],
        "handlers": [], "isSingleNodeService": True, "isMissingSigningKey": False,
        "isMissingEventKeys": False, "features": {}})
