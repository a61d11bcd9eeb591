"""Routes for data lifecycle: the retention setting, pruning, and erasure of a subject's data
(the management API, under the API key like the rest of /api/v1)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from .. import durations, metrics
from ..engine.retention import Unfinished, Windows, uniform
from ..pruner import Pruner
from .errors import ApiError
from .inputs import data_match, read_model
from .models import (
    EraseIn,
    EraseOut,
    FunctionRetention,
    JSONText,
    PruneIn,
    PruneOut,
    RetentionIn,
    RetentionOut,
)
from .openapi import body_schema, errors
from .state import Server, ServerDep

log = logging.getLogger("stepwise.server")
router = APIRouter(default_response_class=JSONText)


def _window(text: str | None, name: str) -> int | None:
    try:
        return None if text is None else durations.parse_window(text)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}, or forever") from None


async def _retention(server: Server) -> RetentionOut:
    plan = await server.engine.retention_plan()
    return RetentionOut(
        completed=durations.show(plan.server.completed_ms),
        failed=durations.show(plan.server.failed_ms),
        functions=[FunctionRetention(app_id=app_id, function_id=function_id,
                                     completed=durations.show(w.completed_ms),
                                     failed=durations.show(w.failed_ms))
                   for (app_id, function_id), w in sorted(plan.own.items())])


@router.get("/api/v1/retention", response_model=RetentionOut,
            summary="How long finished runs are kept: the server's setting and the functions "
                    "with their own", responses=errors(401))
async def get_retention(server: ServerDep) -> RetentionOut:
    return await _retention(server)


@router.put("/api/v1/retention", response_model=RetentionOut,
            summary="Set how long finished runs are kept (the server's setting)",
            openapi_extra=body_schema(RetentionIn), responses=errors(400, 401, 415))
async def put_retention(request: Request, server: ServerDep) -> RetentionOut:
    body = await read_model(request, RetentionIn)
    current = await server.engine.retention_windows()
    completed = current.completed_ms if body.completed is None else \
        _window(body.completed, "completed")
    failed = current.failed_ms if body.failed is None else _window(body.failed, "failed")
    await server.engine.set_retention_windows(Windows(completed, failed))
    log.info("retention set: completed %s, failed %s", durations.show(completed),
             durations.show(failed))
    return await _retention(server)


@router.post("/api/v1/prune", response_model=PruneOut,
             summary="Delete finished runs older than a duration (with their steps, logs and "
                     "the events nothing else holds); never an unfinished run",
             openapi_extra=body_schema(PruneIn), responses=errors(400, 401, 415))
async def prune(request: Request, server: ServerDep) -> PruneOut:
    body = await read_model(request, PruneIn)
    try:
        window = durations.parse_ms(body.older_than)
    except ValueError as exc:
        raise ApiError(400, f"older_than: {exc}") from None
    if body.dry_run:
        counts = await server.engine.prune_counts(window)
        return PruneOut(dry_run=True, runs=counts["runs"], steps=counts["steps"],
                        events=counts["events"], by_status=counts["by_status"], idempotency_keys=0,
                        more=False)
    result = await Pruner(server.engine).prune(uniform(window), max_runs=body.max_runs)
    log.info("prune older than %s: deleted %d runs, %d steps, %d events", body.older_than,
             result.deleted.runs, result.deleted.steps, result.deleted.events)
    deleted = result.deleted
    return PruneOut(dry_run=False, runs=deleted.runs, steps=deleted.steps,
                    events=deleted.events, by_status=None, idempotency_keys=result.keys,
                    more=result.more)


@router.post("/api/v1/erase", response_model=EraseOut,
             summary="Delete everything stored about a subject: the events whose data matches "
                     "and every run that holds one", openapi_extra=body_schema(EraseIn),
             responses=errors(400, 401, 409, 415))
async def erase(request: Request, server: ServerDep) -> EraseOut:
    body = await read_model(request, EraseIn)
    field, value = data_match(body.event_data)
    try:
        result = await server.engine.erase(
            {"data_field": field, "data_value": value, "event_name": body.event_name},
            dry_run=body.dry_run, cancel_unfinished=body.cancel_unfinished)
    except Unfinished as exc:
        raise ApiError(409, str(exc)) from None
    if not body.dry_run:
        deleted = result["deleted"]
        for table, n in deleted.items():
            metrics.PRUNED_ROWS.labels(table).inc(n)
        # The subject's value is not logged: the log would keep what was erased.
        log.info("erasure by %s: %d events, %d runs (%d cancelled first), %s", field,
                 result["events"], result["runs"], result["unfinished"], deleted)
    return EraseOut(dry_run=body.dry_run, **result)
