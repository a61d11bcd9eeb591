"""The HTTP API (JSON, described at /openapi.json), metrics, health and the dashboard."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from . import dashboard, metrics
from .clock import Clock
from .engine import FOREVER, Conflict, Engine, NotFound
from .events import EventIn, StoredEvent, describe_validation_error
from .payloads import Limits, PayloadError, PayloadTooLarge, dumps, loads, new_id
from .status import RunStatus, StepStatus
from .storage import Storage
from .storage.rows import RunRow


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StepOut(BaseModel):
    id: str
    status: StepStatus
    attempts: int
    output: Any = None
    error: Any = None
    started_at: str | None = None
    ended_at: str | None = None


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


class FailureOut(BaseModel):
    step_id: str | None = Field(description="The step that failed; null for the function body")
    attempt: int
    error: Any
    started_at: str | None = None
    ended_at: str | None = None


class RunDetail(RunOut):
    steps: list[StepOut]
    failures: list[FailureOut] = Field(
        default_factory=list, description="Every failed attempt, oldest first")


class RunList(BaseModel):
    runs: list[RunOut]


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


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def run_json(row: RunRow) -> dict[str, Any]:
    out = {
        "id": row["id"], "app_id": row["app_id"], "function_id": row["function_id"],
        "event_id": row["event_id"], "status": row["status"],
        "output": loads(row["output"]) if row["output"] is not None else None,
        "error": loads(row["error"]) if row["error"] is not None else None,
        "attempts": row["attempts"], "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]), "ended_at": iso(row["ended_at"]),
    }
    if "steps" in row:
        out["steps"] = [{
            "id": s["id"], "status": s["status"], "attempts": s["attempts"],
            "output": loads(s["output"]) if s["output"] is not None else None,
            "error": loads(s["error"]) if s["error"] is not None else None,
            "started_at": iso(s["started_at"]), "ended_at": iso(s["ended_at"]),
        } for s in row["steps"]]  # type: ignore[typeddict-item]
        out["failures"] = [{
            "step_id": f["step_id"], "attempt": f["attempt"], "error": loads(f["error"]),
            "started_at": iso(f["started_at"]), "ended_at": iso(f["ended_at"]),
        } for f in row.get("failures", [])]  # type: ignore[attr-defined]
    return out


_EVENT_SCHEMA = EventIn.model_json_schema()
_EVENTS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [_EVENT_SCHEMA, {"type": "array", "items": _EVENT_SCHEMA}]}}}}}


def create_server(storage: Storage, *, event_key: str | None = None,
                  limits: Limits | None = None, clock: Clock | None = None) -> FastAPI:
    """The ASGI app. `event_key`, when set, is required as a Bearer token to send events."""
    limits = limits or Limits()
    engine = Engine(storage, clock or Clock())
    clock = engine.clock
    api = FastAPI(title="stepwise", version="1", docs_url="/docs", redoc_url=None)

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @api.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(parts)}, status_code=400)

    @api.post("/api/v1/events", response_model=EventIds, openapi_extra=_EVENTS_BODY,
              summary="Send one event or a list; answers once they are durably stored")
    async def send_events(request: Request) -> dict[str, Any]:
        if event_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {event_key}".encode()):
                raise ApiError(401, "missing or wrong event key: send "
                                    "'Authorization: Bearer <event key>'")
        body = await read_body(request, limits.request_bytes)
        try:
            raw = loads(body)
        except PayloadError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        now = clock.now_ms()
        ids = await engine.ingest(validate_events(raw, limits, now))
        metrics.EVENTS_RECEIVED.inc(len(ids))
        return {"ids": ids}

    @api.get("/api/v1/runs", response_model=RunList, summary="Search runs, newest first")
    async def list_runs(
        function: str | None = None, status: RunStatus | None = None,
        event_id: str | None = None, limit: int = Query(50, ge=1, le=1000),
        before: str | None = Query(None, description="Only runs older than this run id"),
    ) -> dict[str, Any]:
        rows = await engine.list_runs(
            {"function": function, "status": status, "event_id": event_id, "before": before},
            limit)
        return {"runs": [run_json(r) for r in rows]}

    @api.get("/api/v1/runs/{run_id}", response_model=RunDetail, summary="A run with its steps")
    async def get_run(run_id: str) -> dict[str, Any]:
        try:
            return run_json(await engine.get_run(run_id))
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None

    @api.post("/api/v1/runs/{run_id}/cancel", response_model=RunDetail, summary="Cancel a run")
    async def cancel_run(run_id: str) -> dict[str, Any]:
        return await _manage(engine.cancel, run_id)

    @api.post("/api/v1/runs/{run_id}/replay", response_model=RunDetail,
              summary="Start a failed or cancelled run again, keeping its completed steps")
    async def replay_run(run_id: str) -> dict[str, Any]:
        return await _manage(engine.replay, run_id)

    async def _manage(action: Any, run_id: str) -> dict[str, Any]:
        try:
            return run_json(await action(run_id))
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None

    @api.post("/api/v1/functions/{function_id}/cancel", response_model=CancelledCount,
              summary="Cancel every unfinished run of a function created in a time range")
    async def cancel_function(function_id: str, body: BulkCancel) -> dict[str, Any]:
        functions = await engine.list_functions()
        apps = [f["app_id"] for f in functions if f["id"] == function_id]
        if body.app_id is not None:
            apps = [a for a in apps if a == body.app_id]
        if not apps:
            raise ApiError(404, f"function {function_id} is not registered")
        if len(apps) > 1:
            raise ApiError(400, f"function {function_id} exists in apps {apps}: give app_id")
        after = int(body.started_after.timestamp() * 1000) if body.started_after else 0
        before = (int(body.started_before.timestamp() * 1000) if body.started_before
                  else FOREVER)
        if after >= before:
            raise ApiError(400, "started_after must be before started_before")
        count = await engine.cancel_function_runs(apps[0], function_id, after, before)
        return {"cancelled": count}

    @api.get("/api/v1/functions", summary="Functions registered by workers")
    async def list_functions() -> dict[str, Any]:
        return {"functions": await engine.list_functions()}

    @api.get("/healthz", summary="Liveness and storage check")
    async def healthz() -> dict[str, Any]:
        try:
            counts = await engine.run_counts()
        except Exception as exc:
            raise ApiError(503, f"storage unavailable: {exc}") from None
        return {"ok": True, "runs": counts}

    @api.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> str:
        return dashboard.PAGE

    return api


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
