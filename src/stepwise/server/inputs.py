"""Reading what a request sends: bodies within their size limit, small JSON bodies checked
by a model, events checked all before any is stored, and times in query parameters. Bad
input raises `ApiError` (400, or 413 when over a limit) naming what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from ..events import EventIn, StoredEvent, describe_validation_error
from ..payloads import Limits, PayloadError, PayloadTooLarge, dumps, loads, new_id
from .errors import ApiError

ModelT = TypeVar("ModelT", bound=BaseModel)

#: The largest body `read_model` reads.
SMALL_BODY = 64 * 1024


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


async def read_json(request: Request, limit: int) -> Any:
    """A JSON body of at most `limit` bytes."""
    body = await read_body(request, limit)
    try:
        return loads(body)
    except PayloadError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


async def read_model(request: Request, model: type[ModelT]) -> ModelT:
    """A small JSON body (at most 64 KiB) validated by `model`; 400 naming what is wrong."""
    try:
        return model.model_validate(await read_json(request, SMALL_BODY))
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc)) from None


def validate_events(raw: Any, limits: Limits, now: int) -> list[StoredEvent]:
    """Check every event before storing any: one bad event rejects the request whole."""
    if isinstance(raw, list):
        if not raw:
            raise ApiError(400, "the list of events is empty; send at least one event")
        if len(raw) > limits.events_per_request:
            raise ApiError(413, f"{len(raw)} events in one request, over the limit of "
                                f"{limits.events_per_request}; send them in smaller batches")
        return [_event(item, f"events[{i}]", limits, now) for i, item in enumerate(raw)]
    if isinstance(raw, dict):
        return [_event(raw, "event", limits, now)]
    raise ApiError(400, "body must be an event object or a list of events, got "
                        f"{type(raw).__name__}")


def _event(item: Any, where: str, limits: Limits, now: int) -> StoredEvent:
    """One event of a request, `where` naming it in errors."""
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
    return StoredEvent(id=event.id or new_id(), name=event.name, data=data,
                       ts=event.ts if event.ts is not None else now)


def time_ms(text: str | None, name: str) -> int | None:
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
    return ms(moment)


def ms(moment: datetime) -> int:
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):
        raise ApiError(400, f"time {moment} is out of range") from None


def data_match(event_data: str | None) -> tuple[str | None, str | None]:
    """`path=value` as the engine's `data_field` and `data_value` filters."""
    if not event_data:
        return None, None
    field, _, value = event_data.partition("=")
    return field, value
