"""Inngest's REST API v1, the reads and the cancel that apps call for results and control
(`GET /v1/runs/{id}`, `GET /v1/events/{id}/runs`, `GET /v1/events/{id}`, `DELETE
/v1/runs/{id}`), in Inngest's shapes (`{"data": ..., "metadata": {"fetched_at"}}`), so code
written against Inngest's API reads stepwise's runs. Same credential as the management API
(the API key; open in dev mode). Not part of this API's own schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from .. import metrics
from ..payloads import loads
from ..status import RunStatus
from ..storage.rows import RunRow
from .convert import iso
from .models import NO_NUL, JSONText, RunId
from .state import Server, ServerDep

router = APIRouter(default_response_class=JSONText, include_in_schema=False)

#: A run's status as Inngest names it (queued: not started yet, "Scheduled").
_STATUS = {RunStatus.queued: "Scheduled", RunStatus.running: "Running",
           RunStatus.sleeping: "Running", RunStatus.waiting: "Running",
           RunStatus.completed: "Completed", RunStatus.failed: "Failed",
           RunStatus.cancelled: "Cancelled", RunStatus.skipped: "Skipped"}


def _answer(server: Server, data: Any) -> dict[str, Any]:
    return {"data": data, "metadata": {"fetched_at": iso(server.clock.now_ms())}}


def _run(run: RunRow) -> dict[str, Any]:
    """A run as Inngest's `FunctionRun` (its output, or its error for a failed run)."""
    out: dict[str, Any] = {
        "run_id": run["id"], "run_started_at": iso(run["started_at"] or run["created_at"]),
        "function_id": run["function_id"], "function_version": 0,
        "environment_id": run["app_id"], "event_id": run["event_id"],
        "status": _STATUS[RunStatus(run["status"])], "ended_at": iso(run["ended_at"])}
    if run.get("origin_run_id"):
        out["original_run_id"] = run["origin_run_id"]
    value = run["output"] if run["status"] != RunStatus.failed else run["error"]
    if value is not None:
        out["output"] = loads(value)
    return out


@router.get("/v1/runs/{run_id}")
async def get_run(run_id: RunId, server: ServerDep) -> dict[str, Any]:
    return _answer(server, _run(await server.engine.get_run(run_id)))


@router.delete("/v1/runs/{run_id}")
async def cancel_run(run_id: RunId, server: ServerDep) -> dict[str, Any]:
    run = await server.engine.cancel(run_id)
    metrics.RUNS_FINISHED.labels(run["function_id"], RunStatus.cancelled).inc()
    return _answer(server, _run(run))


EventId = Annotated[str, Path(pattern=NO_NUL, description="An event id")]


@router.get("/v1/events/{event_id}/runs")
async def get_event_runs(event_id: EventId, server: ServerDep) -> dict[str, Any]:
    await server.engine.get_event(event_id)  # 404 for an unknown event
    runs = await server.engine.list_runs({"event_id": event_id}, limit=1000)
    return _answer(server, [_run(r) for r in reversed(runs)])  # oldest first


@router.get("/v1/events/{event_id}")
async def get_event(event_id: EventId, server: ServerDep) -> dict[str, Any]:
    event, _ = await server.engine.get_event(event_id)
    return _answer(server, {"internal_id": event["id"], "id": event["id"],
                            "name": event["name"], "data": loads(event["data"]),
                            "ts": event["ts"], "received_at": iso(event["received_at"])})
