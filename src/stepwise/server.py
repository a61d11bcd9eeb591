"""The HTTP API (JSON, described at /openapi.json), metrics, health and the dashboard."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from . import dashboard, metrics, tracing
from .access import Access, Gate
from .admission import DEFAULT_MAX_IN_FLIGHT, Admission
from .clock import Clock
from .engine import FOREVER, Conflict, Engine, NotFound
from .engine.definitions import AppSource
from .events import EventIn, StoredEvent, describe_validation_error, sessions_meta
from .payloads import (
    MAX_DEPTH,
    Limits,
    PayloadError,
    PayloadTooLarge,
    dumps,
    encoded_too_deep,
    loads,
    new_id,
)
from .remote import protocol, registration
from .status import RunStatus, StepStatus
from .storage import Storage, StorageUnavailable
from .storage.rows import EventRow, RunRow

log = logging.getLogger("stepwise.server")

#: In run lists, an output or error longer than this many characters of JSON is left out
#: (`output_truncated`/`error_truncated`); the run's own URL has it whole. This bounds a page
#: of 1,000 runs to a few MiB, whatever the runs returned.
LIST_PREVIEW_CHARS = 1024
#: Text in a URL: no NUL (the gate refuses it before any route; documented here).
NO_NUL = r"^[^\x00]*$"
#: `event_data=path=value`: a dotted path of names, then the value.
DATA_MATCH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=[^\x00]*$"


RunId = Annotated[str, Path(pattern=NO_NUL, description="A run id")]
def _time_query(description: str) -> Any:
    return Query(description=description, max_length=64, json_schema_extra={"format": "date-time"})


CreatedSince = Annotated[str | None, _time_query("Created at or after (ISO 8601)")]
CreatedUntil = Annotated[str | None, _time_query("Created before (ISO 8601)")]
ReceivedSince = Annotated[str | None, _time_query("Received at or after (ISO 8601)")]
ReceivedUntil = Annotated[str | None, _time_query("Received before (ISO 8601)")]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StepOut(BaseModel):
    id: str
    name: str = Field(description="The step's name in the code: its id, except for SDK steps, "
                                  "whose id is a hash of the name")
    status: StepStatus
    attempts: int
    output: Any = None
    error: Any = None
    started_at: str | None = None
    ended_at: str | None = None
    kind: str | None = Field(None, description="run (code), sleep, wait or invoke; null for "
                                               "steps stored before kinds were (0016)")


class RunOut(BaseModel):
    id: str
    app_id: str
    function_id: str
    event_id: str | None
    status: RunStatus
    output: Any = None
    error: Any = None
    attempts: int
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    url: str = Field(description="This run's own address in the API")
    failed_attempts: int | None = Field(
        default=None, description="Failed attempts of its steps and body (each retried one, and "
                                  "the last); not given for linked runs")
    parent_run_id: str | None = Field(default=None,
                                      description="The run that invoked this one")
    origin_run_id: str | None = Field(
        default=None, description="The failed run this on_failure run handles, or the run "
                                  "this one replays")
    rerun_of: str | None = Field(default=None,
                                 description="The finished run this one re-runs (same event)")
    worker: str | None = Field(default=None, description=(
        "The worker executing it now (host:pid:id), for a running run; in one run's detail"))
    output_truncated: bool = Field(
        default=False, description=f"In lists: the output is over {LIST_PREVIEW_CHARS} "
                                   "characters and left out; GET the run's url for it")
    error_truncated: bool = Field(default=False, description="As output_truncated, for error")


class FailureOut(BaseModel):
    step_id: str | None = Field(description="The step that failed; null for the function body")
    attempt: int
    error: Any
    started_at: str | None = None
    ended_at: str | None = None


class EventOut(BaseModel):
    id: str
    name: str
    data: Any = Field(description="The event's data (left out of lists when over 1 KiB)")
    ts: int = Field(description="Milliseconds since the epoch")
    received_at: str | None = None
    url: str
    data_truncated: bool = False


class LogOut(BaseModel):
    at: str | None
    level: str
    step_id: str | None = Field(description="The step whose code logged it; null: the body")
    message: str


class RunDetail(RunOut):
    steps: list[StepOut]
    failures: list[FailureOut] = Field(
        default_factory=list, description="Every failed attempt, oldest first")
    event: EventOut | None = Field(default=None, description="The event that started the run")
    logs: list[LogOut] = Field(
        default_factory=list, description="ctx.logger lines, oldest first (at most 1,000 per "
                                          "run; each line at most 4,000 characters)")
    children: list[RunOut] = Field(
        default_factory=list, description="Runs this one started: invoked runs and its "
                                          "on_failure handler (outputs left out)")


class Page(BaseModel):
    next: str | None = Field(
        default=None, description="Pass as `before` for the next (older) page; null at the end")


class EventList(Page):
    events: list[EventOut]


class EventDetail(EventOut):
    runs: list[RunOut] = Field(description="The runs the event started (outputs left out)")


class RunList(Page):
    runs: list[RunOut]


class ErrorOut(BaseModel):
    error: str = Field(description="What is wrong, in one line")


class EventIds(BaseModel):
    ids: list[str]


class BulkCancel(BaseModel):
    """Which runs to cancel: created in [started_after, started_before), all when omitted."""

    model_config = ConfigDict(extra="forbid")

    started_after: AwareDatetime | None = None
    started_before: AwareDatetime | None = None
    app_id: str | None = None


class CancelledCount(BaseModel):
    cancelled: int


class RunFilter(BaseModel):
    """Which runs a bulk operation touches: the filters of `GET /api/v1/runs`. Without
    `status`, every run the operation applies to (replay: failed, cancelled, skipped;
    cancel: queued, running, sleeping, waiting)."""

    model_config = ConfigDict(extra="forbid")

    function: str | None = Field(None, max_length=256, pattern=NO_NUL)
    app: str | None = Field(None, max_length=256, pattern=NO_NUL)
    status: RunStatus | None = None
    event_name: str | None = Field(None, max_length=256, pattern=NO_NUL)
    event_data: str | None = Field(None, max_length=1024, pattern=DATA_MATCH)
    since: str | None = Field(None, max_length=64, description="Created at or after (ISO 8601)",
                              json_schema_extra={"format": "date-time"})
    until: str | None = Field(None, max_length=64, description="Created before (ISO 8601)",
                              json_schema_extra={"format": "date-time"})
    dry_run: bool = Field(False, description="Only count the runs it would touch")


class BulkResult(BaseModel):
    matched: int = Field(description="Runs matching the filter that the operation applies to")
    changed: int = Field(description="Runs replayed or cancelled by this request (0 on a "
                                     "dry run)")
    more: bool = Field(description="More matched than one request changes (1,000): send it "
                                   "again")


class WorkerOut(BaseModel):
    id: str
    app_id: str
    host: str
    pid: int
    functions: list[str]
    slots: int = Field(description="How many runs it executes at once")
    in_use: int = Field(description="Slots busy at its last heartbeat")
    started_at: str | None
    heartbeat_at: str | None
    live: bool = Field(description="False: no heartbeat for one lease period (gone)")


class UnservedOut(BaseModel):
    app_id: str
    function_id: str
    queued: int = Field(description="Runs due now that no live worker serves")
    oldest_at: str | None


class AppOut(BaseModel):
    id: str
    sdk: str = Field(description="The SDK and version that synced it (`stepwise-python` for a "
                                 "Python app registered by its workers)")
    url: str | None = Field(description="Where its functions are called (SDK apps)")
    framework: str | None = None
    synced_at: str | None = Field(description="Its last sync (or Python worker start)")
    changed_at: str | None = Field(description="When its functions last changed")
    functions: list[str]
    warnings: list[str] = Field(description="What its last sync said that this server "
                                            "ignored (fields it does not know)")


class AppList(BaseModel):
    apps: list[AppOut]


class WorkerList(BaseModel):
    workers: list[WorkerOut]
    unserved: list[UnservedOut] = Field(
        description="Functions with due runs that no live worker serves: they wait until a "
                    "worker serving them starts")


class FunctionStatsOut(BaseModel):
    completed: list[int]
    failed: list[int]
    p50_ms: list[int | None] = Field(description="Median run duration (creation to end)")
    p95_ms: list[int | None]


class FunctionStats(BaseModel):
    since: str | None
    bucket_ms: int
    buckets: int
    truncated: bool = Field(description="Only the newest 100,000 finished runs were counted")
    functions: dict[str, FunctionStatsOut]


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def stored(text: str | None) -> Any:
    """A stored JSON value for an answer (values stored before the depth limit existed and
    nested deeper are shown as a note, so they cannot break a page)."""
    if text is None:
        return None
    try:
        value = loads(text)
    except PayloadError as exc:
        return f"<unreadable stored value: {exc}>"
    if encoded_too_deep(text, value):
        return f"<stored value nested deeper than {MAX_DEPTH} levels>"
    return value


def run_json(row: RunRow, preview: int | None = None) -> dict[str, Any]:
    """A run as the API shows it; with `preview`, a longer output or error is left out."""
    out: dict[str, Any] = {
        "id": row["id"], "app_id": row["app_id"], "function_id": row["function_id"],
        "event_id": row["event_id"], "status": row["status"],
        "attempts": row["attempts"], "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]), "ended_at": iso(row["ended_at"]),
        "url": f"/api/v1/runs/{row['id']}",
        "parent_run_id": row["parent_run_id"], "origin_run_id": row["origin_run_id"],
        "rerun_of": row.get("rerun_of"),
    }
    if row["status"] == RunStatus.running and row.get("lease_owner"):
        out["worker"] = row.get("lease_owner")
    if "failed_attempts" in row:
        out["failed_attempts"] = int(row["failed_attempts"])  # type: ignore[typeddict-item]
    elif "failures" in row:
        out["failed_attempts"] = len(row["failures"])  # type: ignore[typeddict-item]
    for name, text in (("output", row["output"]), ("error", row["error"])):
        cut = preview is not None and text is not None and len(text) > preview
        out[name] = None if cut else stored(text)
        out[f"{name}_truncated"] = cut
    if "steps" in row:
        out["steps"] = [{
            "id": s["id"], "name": s.get("name") or s["id"], "status": s["status"],
            "attempts": s["attempts"],
            "output": stored(s["output"]), "error": stored(s["error"]),
            "started_at": iso(s["started_at"]), "ended_at": iso(s["ended_at"]),
            "kind": s.get("kind"),
        } for s in row["steps"]]  # type: ignore[typeddict-item]
        out["failures"] = [{
            "step_id": f["step_id"], "attempt": f["attempt"], "error": stored(f["error"]),
            "started_at": iso(f["started_at"]), "ended_at": iso(f["ended_at"]),
        } for f in row.get("failures", [])]  # type: ignore[attr-defined]
        event = cast(EventRow | None, row.get("event"))
        out["event"] = None if event is None else event_json(event)
        out["children"] = [run_json(c) for c in row.get("children", [])]  # type: ignore[attr-defined]
        out["logs"] = [{"at": iso(line["at"]), "level": line["level"], "step_id": line["step_id"],
                        "message": line["message"]}
                       for line in row.get("logs", [])]  # type: ignore[attr-defined]
    return out


def event_json(row: EventRow, preview: int | None = None) -> dict[str, Any]:
    """An event as the API shows it; with `preview`, longer data is left out."""
    cut = preview is not None and len(row["data"]) > preview
    return {"id": row["id"], "name": row["name"], "data": None if cut else stored(row["data"]),
            "ts": row["ts"], "received_at": iso(row.get("received_at")),
            "url": f"/api/v1/events/{row['id']}", "data_truncated": cut}


class JSONText(JSONResponse):
    """A JSON answer encoded directly (no model re-validation: the shapes are built here and
    documented by the routes' response models)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()


_EVENT_SCHEMA = EventIn.model_json_schema()


def _events_body(limits: Limits) -> dict[str, Any]:
    """The request body as documented: one event, or a list of 1 to the limit."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [_EVENT_SCHEMA, {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1,
                                  "maxItems": limits.events_per_request}]}}}}}


def create_server(storage: Storage, *, access: Access | None = None,
                  limits: Limits | None = None, clock: Clock | None = None,
                  max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> Any:
    """The ASGI app: the API behind the access gate (credentials, hosts, body types) and the
    admission bound. Without `access`, everything is open (tests, dev mode sets its own)."""
    limits = limits or Limits()
    access = access or Access(dev_mode=True)
    engine = Engine(storage, clock or Clock())
    clock = engine.clock
    api = FastAPI(title="stepwise", version="1", docs_url="/docs", redoc_url=None,
                  default_response_class=JSONText)

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @api.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @api.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @api.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)  # 405 keeps its Allow

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(parts)}, status_code=400)

    @api.exception_handler(StorageUnavailable)
    async def _unavailable(_: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("storage unavailable: %s", exc)
        return JSONResponse({"error": f"storage unavailable, try again: {exc}"},
                            status_code=503, headers={"Retry-After": "5"})

    @api.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the "
                                      "server log"}, status_code=500)

    @api.post("/api/v1/events", response_model=EventIds, openapi_extra=_events_body(limits),
              summary="Send one event or a list; answers once they are durably stored",
              responses=_errors(401, 413, 415))
    async def send_events(request: Request) -> dict[str, Any]:
        body = await read_body(request, limits.request_bytes)
        try:
            raw = loads(body)
        except PayloadError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        now = clock.now_ms()
        events = validate_events(raw, limits, now)
        trace = tracing.valid_traceparent(request.headers.get("traceparent"))
        if trace is not None:  # the sender's trace goes on into the runs these events start
            events = [replace(e, trace=trace) for e in events]
        ids = await engine.ingest(events)
        metrics.EVENTS_RECEIVED.inc(len(ids))
        return {"ids": ids}

    # The Inngest SDKs' own routes: their protocol is Inngest's, not part of this API's schema.
    @api.post("/fn/register", include_in_schema=False)
    async def register_sdk_app(request: Request) -> JSONResponse:
        """Sync an SDK app: store its functions, each with the URL that runs it. A refusal
        carries `status` in its body too: the JS SDK reads the outcome from there."""
        def refused(status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message, "status": status}, status)

        try:
            body = loads(await read_body(request, limits.request_bytes))
        except PayloadError as exc:
            return refused(400, f"request body is not valid JSON: {exc}")
        except ApiError as exc:
            return refused(exc.status, exc.message)
        expected = request.headers.get("x-inngest-expected-server-kind")
        if expected not in (None, "", access.server_kind):
            return refused(400, f"the app expects a {expected!r} server; this one is "
                                f"{access.server_kind!r} (`stepwise dev` is 'dev', "
                                "`stepwise server` 'cloud')")
        try:
            synced = registration.parse(body)
        except registration.RegistrationError as exc:
            return refused(400, f"cannot sync the app: {exc}")
        modified = await engine.register(synced.app_id, synced.functions, AppSource(
            synced.sdk, synced.url, synced.framework, synced.warnings))
        if modified:
            log.info("synced SDK app %s (%s, %s) at %s: %d functions", synced.app_id,
                     synced.sdk, synced.framework, synced.url, len(synced.functions))
            for warning in synced.warnings:
                log.warning("SDK app %s: %s", synced.app_id, warning)
            for definition in synced.functions:
                for problem in definition.problems:
                    log.warning("SDK app %s: function %s cannot run: %s", synced.app_id,
                                definition.id, problem)
        return JSONResponse({"ok": True, "modified": modified, "app_id": synced.app_id})

    @api.get("/v0/runs/{run_id}/batch", include_in_schema=False)
    async def sdk_run_events(run_id: RunId) -> list[dict[str, Any]]:
        """For an SDK told `use_api`: the run's events."""
        state = await engine.load(run_id)
        if state is None:
            raise ApiError(404, f"run {run_id} not found")
        return protocol.run_events(state)

    @api.get("/v0/runs/{run_id}/actions", include_in_schema=False)
    async def sdk_run_steps(run_id: RunId) -> dict[str, Any]:
        """For an SDK told `use_api`: the run's memoized steps, by hashed id."""
        state = await engine.load(run_id)
        if state is None:
            raise ApiError(404, f"run {run_id} not found")
        return protocol.memo(state).steps

    @api.post("/e/{event_key}", include_in_schema=False)
    async def sdk_events(event_key: Annotated[str, Path(pattern=NO_NUL)],
                         request: Request) -> JSONResponse:
        """Events as the SDKs send them; answers `{"ids", "status"}` like Inngest."""
        del event_key  # checked by the access gate
        try:
            raw = loads(await read_body(request, limits.request_bytes))
        except PayloadError as exc:
            return JSONResponse({"ids": [], "status": 400,
                                 "error": f"request body is not valid JSON: {exc}"}, 400)
        items = raw if isinstance(raw, list) else [raw]
        metas: list[str | None] = []
        try:
            for i, item in enumerate(items):  # sessions, which apps pass on (propagated)
                meta = sessions_meta(item.get("meta"), f"events[{i}]") \
                    if isinstance(item, dict) else None
                metas.append(None if meta is None else dumps(meta, f"events[{i}].meta"))
        except (ValueError, PayloadError) as exc:
            return JSONResponse({"ids": [], "status": 400, "error": str(exc)}, 400)
        # The SDKs also send `user` (Inngest's, deprecated) and `v`: accepted, not stored.
        items = [{k: v for k, v in item.items() if k not in ("user", "v", "meta")}
                 if isinstance(item, dict) else item for item in items]
        try:
            events = validate_events(items if isinstance(raw, list) else items[0], limits,
                                     clock.now_ms())
        except ApiError as exc:
            return JSONResponse({"ids": [], "status": exc.status, "error": exc.message},
                                exc.status)
        events = [replace(ev, meta=meta) if meta else ev
                  for ev, meta in zip(events, metas, strict=True)]
        ids = await engine.ingest(events)
        metrics.EVENTS_RECEIVED.inc(len(ids))
        return JSONResponse({"ids": ids, "status": 200})

    @api.get("/api/v1/runs", response_model=RunList, summary="Search runs, newest first",
             responses=_errors(401))
    async def list_runs(
        function: str | None = Query(None, max_length=256, pattern=NO_NUL),
        status: RunStatus | None = None,
        event_id: str | None = Query(None, max_length=256, pattern=NO_NUL),
        limit: int = Query(50, ge=1, le=1000),
        before: str | None = Query(None, max_length=64, pattern=NO_NUL,
                                   description="Only runs older than this run id (paging)"),
        event_name: str | None = Query(None, max_length=256, pattern=NO_NUL,
                                       description="Runs started by events of this name"),
        event_data: str | None = Query(
            None, max_length=1024, pattern=DATA_MATCH,
            description="`path=value`: runs whose event data has this value at this dotted "
                        "path (strings and numbers), e.g. `user.id=42`"),
        since: CreatedSince = None,
        until: CreatedUntil = None,
    ) -> dict[str, Any]:
        field, _, value = event_data.partition("=") if event_data else (None, "", None)
        rows = await engine.list_runs(
            {"function": function, "status": status, "event_id": event_id, "before": before,
             "event_name": event_name, "since": _time_ms(since, "since"),
             "until": _time_ms(until, "until"),
             "data_field": field, "data_value": value},
            limit, preview=LIST_PREVIEW_CHARS)
        return {"runs": [run_json(r, LIST_PREVIEW_CHARS) for r in rows],
                "next": rows[-1]["id"] if len(rows) == limit else None}

    @api.get("/api/v1/runs/{run_id}", response_model=RunDetail, summary="A run with its steps",
             responses=_errors(401, 404))
    async def get_run(run_id: RunId) -> dict[str, Any]:
        return run_json(await engine.get_run(run_id))

    @api.post("/api/v1/runs/{run_id}/cancel", response_model=RunDetail, summary="Cancel a run",
              responses=_errors(401, 404, 409, 415))
    async def cancel_run(run_id: RunId) -> dict[str, Any]:
        run = run_json(await engine.cancel(run_id))
        metrics.RUNS_FINISHED.labels(run["function_id"], RunStatus.cancelled).inc()
        return run

    @api.post("/api/v1/runs/{run_id}/replay", response_model=RunDetail,
              summary="Start a failed or cancelled run again, keeping its completed steps",
              responses=_errors(401, 404, 409, 415))
    async def replay_run(run_id: RunId) -> dict[str, Any]:
        return run_json(await engine.replay(run_id))

    @api.post("/api/v1/runs/{run_id}/wake", response_model=RunDetail,
              summary="End a run's sleeps and waits now, as if their time had come (a run "
                      "waiting to be retried is retried now)",
              responses=_errors(401, 404, 409, 415))
    async def wake_run(run_id: RunId) -> dict[str, Any]:
        return run_json(await engine.wake(run_id))

    @api.post("/api/v1/runs/{run_id}/rerun", response_model=RunDetail,
              summary="Start a new run of a finished run's function with the same event",
              responses=_errors(401, 404, 409, 415))
    async def rerun_run(run_id: RunId) -> dict[str, Any]:
        return run_json(await engine.rerun(run_id))

    async def bulk(action: str, request: Request) -> dict[str, Any]:
        body = await read_model(request, RunFilter)
        field, _, value = body.event_data.partition("=") if body.event_data else (None, "", None)
        result = await engine.bulk(action, {
            "function": body.function, "app": body.app, "status": body.status,
            "event_name": body.event_name, "data_field": field, "data_value": value,
            "since": _time_ms(body.since, "since"), "until": _time_ms(body.until, "until")},
            dry_run=body.dry_run)
        log.info("bulk %s%s: %d matched, %d changed", action, " (dry run)" if body.dry_run
                 else "", result["matched"], result["changed"])
        if action == "cancel":
            for function_id, count in result["by_function"].items():
                metrics.RUNS_FINISHED.labels(function_id, RunStatus.cancelled).inc(count)
        return {k: result[k] for k in ("matched", "changed", "more")}

    @api.post("/api/v1/runs/replay", response_model=BulkResult,
              summary="Replay every failed (or cancelled, skipped) run matching a filter",
              openapi_extra=_body_schema(RunFilter), responses=_errors(401, 413, 415))
    async def bulk_replay(request: Request) -> dict[str, Any]:
        return await bulk("replay", request)

    @api.post("/api/v1/runs/cancel", response_model=BulkResult,
              summary="Cancel every unfinished run matching a filter",
              openapi_extra=_body_schema(RunFilter), responses=_errors(401, 413, 415))
    async def bulk_cancel(request: Request) -> dict[str, Any]:
        return await bulk("cancel", request)

    @api.get("/api/v1/apps", response_model=AppList,
             summary="Apps: SDK apps (URL, SDK, framework) and Python apps, with last sync",
             responses=_errors(401))
    async def list_apps() -> dict[str, Any]:
        return {"apps": [{**a, "synced_at": iso(a["synced_at"]),
                          "changed_at": iso(a["changed_at"])} for a in await engine.list_apps()]}

    @api.get("/api/v1/workers", response_model=WorkerList,
             summary="Workers (live and recently gone) and runs no live worker serves",
             responses=_errors(401))
    async def list_workers() -> dict[str, Any]:
        workers, unserved = await engine.workers()
        return {"workers": [{**w, "started_at": iso(w["started_at"]),
                             "heartbeat_at": iso(w["heartbeat_at"])} for w in workers],
                "unserved": [{**u, "oldest_at": iso(u["oldest_at"])} for u in unserved]}

    @api.get("/api/v1/stats/functions", response_model=FunctionStats,
             summary="Per function: completed and failed runs and p50/p95 durations over time",
             responses=_errors(401))
    async def function_stats(hours: int = Query(24, ge=1, le=24 * 90),
                             buckets: int = Query(24, ge=1, le=200)) -> dict[str, Any]:
        since = clock.now_ms() - hours * 3600 * 1000
        stats = await engine.function_stats(since, buckets)
        return {**stats, "since": iso(stats["since"])}

    @api.post("/api/v1/functions/{function_id}/cancel", response_model=CancelledCount,
              summary="Cancel every unfinished run of a function created in a time range",
              openapi_extra=_body_schema(BulkCancel), responses=_errors(401, 404, 413, 415))
    async def cancel_function(function_id: Annotated[str, Path(pattern=NO_NUL)],
                              request: Request) -> dict[str, Any]:
        body = await read_model(request, BulkCancel)
        functions = await engine.list_functions()
        apps = [f["app_id"] for f in functions if f["id"] == function_id]
        if body.app_id is not None:
            apps = [a for a in apps if a == body.app_id]
        if not apps:
            raise ApiError(404, f"function {function_id} is not registered")
        if len(apps) > 1:
            raise ApiError(400, f"function {function_id} exists in apps {apps}: give app_id")
        after = _ms(body.started_after) if body.started_after else 0
        before = _ms(body.started_before) if body.started_before else FOREVER
        if after >= before:
            raise ApiError(400, "started_after must be before started_before")
        count = await engine.cancel_function_runs(apps[0], function_id, after, before)
        metrics.RUNS_FINISHED.labels(function_id, RunStatus.cancelled).inc(count)
        return {"cancelled": count}

    @api.get("/api/v1/events", response_model=EventList, summary="Stored events, newest first",
             responses=_errors(401))
    async def list_events(
        name: str | None = Query(None, max_length=256, pattern=NO_NUL),
        since: ReceivedSince = None,
        until: ReceivedUntil = None,
        limit: int = Query(50, ge=1, le=1000),
        before: str | None = Query(None, max_length=256, pattern=NO_NUL,
                                   description="Only events older than this event id (paging)"),
    ) -> dict[str, Any]:
        rows = await engine.list_events({"name": name, "since": _time_ms(since, "since"),
                                         "until": _time_ms(until, "until"), "before": before},
                                        limit)
        return {"events": [event_json(r, LIST_PREVIEW_CHARS) for r in rows],
                "next": rows[-1]["id"] if len(rows) == limit else None}

    @api.get("/api/v1/events/{event_id}", response_model=EventDetail,
             summary="One event with its data and the runs it started",
             responses=_errors(401, 404))
    async def get_event(event_id: Annotated[str, Path(pattern=NO_NUL)]) -> dict[str, Any]:
        event, runs = await engine.get_event(event_id)
        return {**event_json(event), "runs": [run_json(r) for r in runs]}

    @api.get("/api/v1/functions", summary="Functions registered by workers",
             responses=_errors(401))
    async def list_functions() -> dict[str, Any]:
        return {"functions": await engine.list_functions()}

    @api.get("/healthz", summary="Liveness and storage check (needs no credential)",
             responses={503: {"model": ErrorOut, "description": "Storage unavailable"}})
    async def healthz() -> dict[str, Any]:
        try:
            counts = await engine.run_counts()
        except Exception as exc:
            raise ApiError(503, f"storage unavailable: {exc}") from None
        return {"ok": True, "runs": counts}

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses=_errors(401))
    async def prometheus() -> Response:
        try:
            metrics.set_deployment(*await engine.deployment_stats())
        except StorageUnavailable as exc:  # the process counters are still worth having
            log.warning("metrics: deployment gauges not refreshed: %s", exc)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def page() -> HTMLResponse:
        return HTMLResponse(dashboard.shell(), headers={"Cache-Control": "no-cache"})

    for path in dashboard.PAGES:
        api.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    api.mount(dashboard.ASSETS, StaticFiles(packages=[("stepwise.dashboard", "static")]),
              name="assets")

    schema = _openapi(api)
    api.openapi = lambda: schema  # type: ignore[method-assign]
    return Admission(Gate(api, access), max_in_flight)


_ERROR_TEXT = {
    400: "Bad input; `error` names what is wrong",
    401: "Missing or wrong credential",
    404: "No such run or function",
    409: "Not possible in the run's current status",
    413: "Body or event over its size limit",
    415: "Body is not JSON (Content-Type must be application/json)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": _ERROR_TEXT[code]} for code in codes}


def _openapi(api: FastAPI) -> dict[str, Any]:
    """The schema as the server answers: bad input is 400 (FastAPI would document 422), and
    any route may answer 503 when busy or when storage is down."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=api.title, version=api.version, routes=api.routes)
    error_ref = {"content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorOut"}}}}
    for path in schema["paths"].values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.setdefault("400", {"description": _ERROR_TEXT[400], **error_ref})
            responses.setdefault("503", {"description": "Busy (see Retry-After) or storage "
                                                        "unavailable", **error_ref})
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorOut"] = ErrorOut.model_json_schema()
    for name, model in _BODY_MODELS.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[name] = body
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    return schema


def _time_ms(text: str | None, name: str) -> int | None:
    """An ISO 8601 query parameter in milliseconds since the epoch (no zone: UTC)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name}: {text!r} is not an ISO 8601 time, e.g. "
                            "2026-11-23T09:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _ms(moment)


def _ms(moment: datetime) -> int:
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):
        raise ApiError(400, f"time {moment} is out of range") from None


ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_model(request: Request, model: type[ModelT]) -> ModelT:
    """A small JSON body (at most 64 KiB) validated by `model`; 400 naming what is wrong."""
    try:
        return model.model_validate(loads(await read_body(request, 64 * 1024)))
    except PayloadError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc)) from None


#: Models of request bodies read by `read_model`, added to the schema's components.
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    _BODY_MODELS[model.__name__] = model
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes of body; answer 413 as soon as it is exceeded."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"request body is {declared} bytes, over the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def validate_events(raw: Any, limits: Limits, now: int) -> list[StoredEvent]:
    """Check every event before storing any: one bad event rejects the request whole."""
    if isinstance(raw, list):
        if not raw:
            raise ApiError(400, "the list of events is empty; send at least one event")
        if len(raw) > limits.events_per_request:
            raise ApiError(413, f"{len(raw)} events in one request, over the limit of "
                                f"{limits.events_per_request}; send them in smaller batches")
        items, prefix = raw, "events"
    elif isinstance(raw, dict):
        items, prefix = [raw], ""
    else:
        raise ApiError(400, "body must be an event object or a list of events, got "
                            f"{type(raw).__name__}")
    out = []
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]" if prefix else "event"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object, got {type(item).__name__}")
        try:
            event = EventIn.model_validate(item)
        except ValidationError as exc:
            raise ApiError(400, describe_validation_error(exc, where)) from None
        try:
            data = dumps(event.data, f"{where}.data", limits.event_bytes)
        except PayloadError as exc:
            raise ApiError(413 if isinstance(exc, PayloadTooLarge) else 400, str(exc)) from None
        out.append(StoredEvent(id=event.id or new_id(), name=event.name, data=data,
                                   ts=event.ts if event.ts is not None else now))
    return out
