"""The API's description at /openapi.json, as the server answers: bad input is 400 (FastAPI
would document 422), any route may answer 503 (busy, or storage down), every error has the
`ErrorOut` shape, and the bodies routes read themselves (events, bulk filters) are
described by their models."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ..events import EventIn
from ..payloads import Limits
from .models import BulkCancel, EraseIn, ErrorOut, PruneIn, RetentionIn, RunFilter

ERROR_TEXT = {
    400: "Bad input; `error` names what is wrong",
    401: "Missing or wrong credential",
    404: "No such run or function",
    409: "Not possible in the run's current status",
    413: "Body or event over its size limit",
    415: "Body is not JSON (Content-Type must be application/json)",
}

#: Models of request bodies read by `inputs.read_model`, added to the schema's components.
BODY_MODELS: tuple[type[BaseModel], ...] = (RunFilter, BulkCancel, RetentionIn, PruneIn,
                                              EraseIn)

_ERROR_REF = {"content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/ErrorOut"}}}}
_EVENT_SCHEMA = EventIn.model_json_schema()


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented error answers."""
    return {code: {"model": ErrorOut, "description": ERROR_TEXT[code]} for code in codes}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` for a body read by `read_model` (one of BODY_MODELS)."""
    if model not in BODY_MODELS:
        raise ValueError(f"add {model.__name__} to BODY_MODELS")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{model.__name__}"}}}}}


def events_body() -> dict[str, Any]:
    """The events route's `openapi_extra`: one event, or a list of 1 to the limit (the
    default limit here; `schema` puts in each server's own)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [_EVENT_SCHEMA, {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1,
                                  "maxItems": Limits().events_per_request}]}}}}}


def schema(api: FastAPI, limits: Limits) -> dict[str, Any]:
    """`api`'s schema, once its routes are all in."""
    document = get_openapi(title=api.title, version=api.version, routes=api.routes)
    events = document["paths"]["/api/v1/events"]["post"]["requestBody"]
    events["content"]["application/json"]["schema"]["oneOf"][1]["maxItems"] = \
        limits.events_per_request
    for path in document["paths"].values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.setdefault("400", {"description": ERROR_TEXT[400], **_ERROR_REF})
            responses.setdefault("503", {"description": "Busy (see Retry-After) or storage "
                                                        "unavailable", **_ERROR_REF})
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorOut"] = ErrorOut.model_json_schema()
    for model in BODY_MODELS:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return document
