"""The public JSON API under /api/v1 (events, runs, bulk operations, apps, workers,
functions, stats), with /healthz and /metrics: what the dashboard and operators call,
described at /openapi.json."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from .. import metrics, tracing
from ..engine import FOREVER
from ..engine.search import Q_PATTERN
from ..status import RunStatus
from ..storage import StorageUnavailable
from . import convert
from .errors import ApiError
from .inputs import data_match, ms, read_json, read_model, time_ms, validate_events
from .models import (
    DATA_MATCH,
    LIST_PREVIEW_CHARS,
    NO_NUL,
    AppList,
    BulkCancel,
    BulkResult,
    CancelledCount,
    ErrorOut,
    EventDetail,
    EventIds,
    EventList,
    FunctionStats,
    JSONText,
    RunDetail,
    RunFilter,
    RunId,
    RunList,
    WorkerList,
)
from .openapi import body_schema, errors, events_body
from .state import Server, ServerDep

log = logging.getLogger("stepwise.server")
router = APIRouter(default_response_class=JSONText)

FunctionId = Annotated[str, Path(pattern=NO_NUL)]


def _time_query(description: str) -> Any:
    return Query(description=description, max_length=64, json_schema_extra={"format": "date-time"})


CreatedSince = Annotated[str | None, _time_query("Created at or after (ISO 8601)")]
CreatedUntil = Annotated[str | None, _time_query("Created before (ISO 8601)")]
ReceivedSince = Annotated[str | None, _time_query("Received at or after (ISO 8601)")]
ReceivedUntil = Annotated[str | None, _time_query("Received before (ISO 8601)")]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("/api/v1/events", response_model=EventIds, openapi_extra=events_body(),
             summary="Send one event or a list; answers once they are durably stored",
             responses=errors(401, 413, 415))
async def send_events(request: Request, server: ServerDep) -> EventIds:
    raw = await read_json(request, server.limits.request_bytes)
    events = validate_events(raw, server.limits, server.clock.now_ms())
    trace = tracing.valid_traceparent(request.headers.get("traceparent"))
    if trace is not None:  # the sender's trace goes on into the runs these events start
        events = [replace(e, trace=trace) for e in events]
    ids = await server.engine.ingest(events)
    metrics.EVENTS_RECEIVED.inc(len(ids))
    return EventIds(ids=ids)


SEARCH_HELP = (
    "Search: words separated by spaces, all of which must match (quote a value with spaces: "
    "`user.name=\"Ada L\"`). `path=value`: the event's data has that value at that dotted "
    "path (as `event_data`); `function:ID`, `event:NAME`, `error:WORD`, `id:PREFIX` say what "
    "a word is; any other word is a function's id, an event name a function is triggered "
    "by, the start of a run id (4 characters or more), else a word of the run's errors "
    "(any case; failed attempts' errors count too), the first of these that applies. At "
    "most 16 words")


@router.get("/api/v1/runs", response_model=RunList, summary="Search runs, newest first",
            responses=errors(400, 401))
async def list_runs(
    server: ServerDep,
    function: str | None = Query(None, max_length=256, pattern=NO_NUL),
    status: RunStatus | None = None,
    event_id: str | None = Query(None, max_length=256, pattern=NO_NUL),
    limit: Limit = 50,
    before: str | None = Query(None, max_length=64, pattern=NO_NUL,
                               description="Only runs older than this run id (paging)"),
    event_name: str | None = Query(None, max_length=256, pattern=NO_NUL,
                                   description="Runs started by events of this name"),
    event_data: str | None = Query(
        None, max_length=1024, pattern=DATA_MATCH,
        description="`path=value`: runs whose event data has this value at this dotted "
                    "path (strings, numbers, `true`/`false`), e.g. `user.id=42`"),
    since: CreatedSince = None,
    until: CreatedUntil = None,
    q: str | None = Query(None, max_length=1024, pattern=Q_PATTERN, description=SEARCH_HELP),
) -> RunList:
    field, value = data_match(event_data)
    found = await server.engine.search_runs(
        {"function": function, "status": status, "event_id": event_id, "before": before,
         "event_name": event_name, "since": time_ms(since, "since"),
         "until": time_ms(until, "until"), "data_field": field, "data_value": value},
        q, limit, preview=LIST_PREVIEW_CHARS)
    rows = found.runs
    return RunList(runs=[convert.run_out(r, LIST_PREVIEW_CHARS) for r in rows],
                   next=rows[-1]["id"] if len(rows) == limit else None,
                   total=found.total, total_exact=found.exact)


@router.get("/api/v1/runs/{run_id}", response_model=RunDetail, summary="A run with its steps",
            responses=errors(401, 404))
async def get_run(run_id: RunId, server: ServerDep) -> RunDetail:
    return convert.run_detail(await server.engine.get_run(run_id))


@router.post("/api/v1/runs/{run_id}/cancel", response_model=RunDetail, summary="Cancel a run",
             responses=errors(401, 404, 409, 415))
async def cancel_run(run_id: RunId, server: ServerDep) -> RunDetail:
    run = convert.run_detail(await server.engine.cancel(run_id))
    metrics.RUNS_FINISHED.labels(run.function_id, RunStatus.cancelled).inc()
    return run


@router.post("/api/v1/runs/{run_id}/replay", response_model=RunDetail,
             summary="Start a failed or cancelled run again, keeping its completed steps",
             responses=errors(401, 404, 409, 415))
async def replay_run(run_id: RunId, server: ServerDep) -> RunDetail:
    return convert.run_detail(await server.engine.replay(run_id))


@router.post("/api/v1/runs/{run_id}/wake", response_model=RunDetail,
             summary="End a run's sleeps and waits now, as if their time had come (a run "
                     "waiting to be retried is retried now)",
             responses=errors(401, 404, 409, 415))
async def wake_run(run_id: RunId, server: ServerDep) -> RunDetail:
    return convert.run_detail(await server.engine.wake(run_id))


@router.post("/api/v1/runs/{run_id}/rerun", response_model=RunDetail,
             summary="Start a new run of a finished run's function with the same event",
             responses=errors(401, 404, 409, 415))
async def rerun_run(run_id: RunId, server: ServerDep) -> RunDetail:
    return convert.run_detail(await server.engine.rerun(run_id))


async def _bulk(action: str, request: Request, server: Server) -> BulkResult:
    """Replay or cancel the runs matching the body's filter (`Engine.bulk`)."""
    body = await read_model(request, RunFilter)
    field, value = data_match(body.event_data)
    result = await server.engine.bulk(action, {
        "function": body.function, "app": body.app, "status": body.status,
        "event_name": body.event_name, "data_field": field, "data_value": value,
        "since": time_ms(body.since, "since"), "until": time_ms(body.until, "until"),
        "q": body.q}, dry_run=body.dry_run)
    log.info("bulk %s%s: %d matched, %d changed", action, " (dry run)" if body.dry_run
             else "", result["matched"], result["changed"])
    if action == "cancel":
        for function_id, count in result["by_function"].items():
            metrics.RUNS_FINISHED.labels(function_id, RunStatus.cancelled).inc(count)
    return BulkResult(matched=result["matched"], changed=result["changed"],
                      more=result["more"])


@router.post("/api/v1/runs/replay", response_model=BulkResult,
             summary="Replay every failed (or cancelled, skipped) run matching a filter",
             openapi_extra=body_schema(RunFilter), responses=errors(401, 413, 415))
async def bulk_replay(request: Request, server: ServerDep) -> BulkResult:
    return await _bulk("replay", request, server)


@router.post("/api/v1/runs/cancel", response_model=BulkResult,
             summary="Cancel every unfinished run matching a filter",
             openapi_extra=body_schema(RunFilter), responses=errors(401, 413, 415))
async def bulk_cancel(request: Request, server: ServerDep) -> BulkResult:
    return await _bulk("cancel", request, server)


@router.get("/api/v1/apps", response_model=AppList,
            summary="Apps: SDK apps (URL, SDK, framework) and Python apps, with last sync",
            responses=errors(401))
async def list_apps(server: ServerDep) -> AppList:
    return AppList(apps=[convert.app_out(a) for a in await server.engine.list_apps()])


@router.get("/api/v1/workers", response_model=WorkerList,
            summary="Workers (live and recently gone) and runs no live worker serves",
            responses=errors(401))
async def list_workers(server: ServerDep) -> WorkerList:
    workers, unserved = await server.engine.workers()
    return WorkerList(workers=[convert.worker_out(w) for w in workers],
                      unserved=[convert.unserved_out(u) for u in unserved])


@router.get("/api/v1/stats/functions", response_model=FunctionStats,
            summary="Per function: completed and failed runs and p50/p95 durations over time",
            responses=errors(401))
async def function_stats(server: ServerDep, hours: int = Query(24, ge=1, le=24 * 90),
                         buckets: int = Query(24, ge=1, le=200)) -> FunctionStats:
    since = server.clock.now_ms() - hours * 3600 * 1000
    return convert.function_stats(await server.engine.function_stats(since, buckets))


async def _function_app(server: Server, function_id: str, app_id: str | None) -> str:
    """The one app (`app_id` if given) where `function_id` is registered."""
    functions = await server.engine.list_functions()
    apps = [f["app_id"] for f in functions if f["id"] == function_id]
    if app_id is not None:
        apps = [a for a in apps if a == app_id]
    if not apps:
        raise ApiError(404, f"function {function_id} is not registered")
    if len(apps) > 1:
        raise ApiError(400, f"function {function_id} exists in apps {apps}: give app_id")
    return str(apps[0])


@router.post("/api/v1/functions/{function_id}/cancel", response_model=CancelledCount,
             summary="Cancel every unfinished run of a function created in a time range",
             openapi_extra=body_schema(BulkCancel), responses=errors(401, 404, 413, 415))
async def cancel_function(function_id: FunctionId, request: Request,
                          server: ServerDep) -> CancelledCount:
    body = await read_model(request, BulkCancel)
    app_id = await _function_app(server, function_id, body.app_id)
    after = ms(body.started_after) if body.started_after else 0
    before = ms(body.started_before) if body.started_before else FOREVER
    if after >= before:
        raise ApiError(400, "started_after must be before started_before")
    count = await server.engine.cancel_function_runs(app_id, function_id, after, before)
    metrics.RUNS_FINISHED.labels(function_id, RunStatus.cancelled).inc(count)
    return CancelledCount(cancelled=count)


@router.get("/api/v1/events", response_model=EventList, summary="Stored events, newest first",
            responses=errors(401))
async def list_events(
    server: ServerDep,
    name: str | None = Query(None, max_length=256, pattern=NO_NUL),
    since: ReceivedSince = None,
    until: ReceivedUntil = None,
    limit: Limit = 50,
    before: str | None = Query(None, max_length=256, pattern=NO_NUL,
                               description="Only events older than this event id (paging)"),
) -> EventList:
    rows = await server.engine.list_events(
        {"name": name, "since": time_ms(since, "since"), "until": time_ms(until, "until"),
         "before": before}, limit)
    return EventList(events=[convert.event_out(r, LIST_PREVIEW_CHARS) for r in rows],
                     next=rows[-1]["id"] if len(rows) == limit else None)


@router.get("/api/v1/events/{event_id}", response_model=EventDetail,
            summary="One event with its data and the runs it started",
            responses=errors(401, 404))
async def get_event(event_id: Annotated[str, Path(pattern=NO_NUL)],
                    server: ServerDep) -> EventDetail:
    return convert.event_detail(*await server.engine.get_event(event_id))


# The two answers below are free-form objects in the schema (`dict[str, Any]`): kept so.
@router.get("/api/v1/functions", summary="Functions registered by workers and SDK syncs, "
            "by app and id, a page at a time (`next`: the URL of the next page, or null)",
            responses=errors(401))
async def list_functions(
        server: ServerDep, limit: Limit = 500,
        after_app: str | None = Query(None, max_length=256, pattern=NO_NUL,
                                      description="Only functions after this app's ..."),
        after_id: str | None = Query(None, max_length=256, pattern=NO_NUL,
                                     description="... function of this id (paging)")
) -> dict[str, Any]:
    after = None if after_app is None and after_id is None else (after_app or "", after_id or "")
    functions = await server.engine.list_functions_page(after, limit)
    last = functions[-1] if len(functions) == limit else None
    return {"functions": functions, "next": None if last is None else "/api/v1/functions?" +
            urlencode({"limit": limit, "after_app": last["app_id"], "after_id": last["id"]})}


@router.get("/healthz", summary="Liveness and storage check (needs no credential)",
            responses={503: {"model": ErrorOut, "description": "Storage unavailable"}})
async def healthz(server: ServerDep) -> dict[str, Any]:
    try:
        counts = await server.engine.run_counts()
    except Exception as exc:
        raise ApiError(503, f"storage unavailable: {exc}") from None
    return {"ok": True, "runs": counts}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses=errors(401))
async def prometheus(server: ServerDep) -> Response:
    try:
        metrics.set_deployment(*await server.engine.deployment_stats())
    except StorageUnavailable as exc:  # the process counters are still worth having
        log.warning("metrics: deployment gauges not refreshed: %s", exc)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")
