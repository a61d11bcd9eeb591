"""The audit log over HTTP: `AuditTrail` records every management action as it is answered,
and `GET /api/v1/audit` reads the log (newest first, paged).

Recorded in one place, in front of every route, so a new management route is audited without
anyone remembering to: each change (POST, PUT, PATCH, DELETE) by someone the gate identified,
with the route it reached, its path parameters, its query and JSON body (bounded), and the
status it was answered with, refusals of a role included. Not recorded: reads, event sending
(the event key's traffic is data, not management) and what SDK apps send with their signing
key (syncs, signals); sign-ins and sign-outs are recorded by `signin`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query
from starlette.routing import compile_path

from ..access import (
    EVENT_PATHS,
    PRINCIPAL,
    READ_POSTS,
    SDK_EVENT_PREFIX,
    SDK_KEY_PATHS,
    SIGNIN_PATHS,
    ASGIApp,
    Message,
    Principal,
    Receive,
    Scope,
    Send,
)
from ..engine import Engine
from ..engine.audit import MAX_DETAIL_CHARS
from ..payloads import loads
from ..storage.base import StorageUnavailable
from .convert import iso
from .models import AuditEntry, AuditPage, JSONText
from .openapi import errors
from .state import ServerDep

log = logging.getLogger("stepwise.server")
router = APIRouter(default_response_class=JSONText)

_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def audited(method: str, path: str) -> bool:
    """Whether a request is a management action the log records."""
    return method in _CHANGES and path not in EVENT_PATHS and path not in SIGNIN_PATHS \
        and path not in READ_POSTS \
        and not path.startswith(SDK_EVENT_PREFIX) and not path.startswith(SDK_KEY_PATHS)


class AuditTrail:
    """ASGI middleware, outside the gate: records each audited request before its answer
    goes out."""

    def __init__(self, app: ASGIApp, engine: Engine, paths: dict[str, dict[str, Any]]
                 ) -> None:
        """`paths`: the API schema's, to name the route of a request refused before it was
        routed (by the gate)."""
        self.app = app
        self.engine = engine
        # Literal paths before templated ones: /api/v1/runs/cancel, not /api/v1/runs/{run_id}.
        self.routes = sorted(
            ((compile_path(template)[0], template, {m.upper() for m in methods})
             for template, methods in paths.items()), key=lambda r: r[1].count("{"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def reading() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= MAX_DETAIL_CHARS:
                body.extend(message.get("body", b"")[:MAX_DETAIL_CHARS + 1])
            return message

        async def answering(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self.record(scope, int(message["status"]), bytes(body))
            await send(message)

        await self.app(scope, reading, answering)

    async def record(self, scope: Scope, status: int, body: bytes) -> None:
        principal: Principal | None = scope.get(PRINCIPAL)
        if principal is None:  # not identified: refused before anyone was known
            return
        template, params = self.route_of(scope)
        detail: dict[str, Any] = {}
        if scope.get("query_string"):
            detail["query"] = scope["query_string"].decode("latin-1")
        if body:
            detail["body"] = _body(body)
        try:
            await self.engine.record_audit(
                principal.actor, principal.role, f"{scope['method']} {template}",
                ",".join(str(v) for v in params.values()), status, detail)
        except StorageUnavailable:
            log.error("audit: could not record %s %s by %s (%s): the database is unavailable",
                      scope["method"], scope["path"], principal.actor, status)


    def route_of(self, scope: Scope) -> tuple[str, dict[str, Any]]:
        """The route's path template and parameters (the raw path when none matches)."""
        for pattern, template, methods in self.routes:
            found = pattern.match(scope["path"])
            if found is not None and scope["method"] in methods:
                return template, found.groupdict()
        return scope["path"], {}


def _body(body: bytes) -> Any:
    if len(body) > MAX_DETAIL_CHARS:
        return {"truncated": body[:MAX_DETAIL_CHARS].decode("utf-8", "replace")}
    try:
        return loads(body)
    except ValueError:
        return {"unreadable": body.decode("utf-8", "replace")}


@router.get("/api/v1/audit", response_model=AuditPage,
            summary="The audit log: management actions and sign-ins, newest first",
            responses=errors(400, 401))
async def audit_log(server: ServerDep,
                    limit: int = Query(50, ge=1, le=500),
                    before: str | None = Query(
                        None, max_length=64, pattern=r"^\d{1,16}:[0-9A-Z]{1,26}$",
                        description="The `next` of the previous page")
                    ) -> AuditPage:
    cursor = None
    if before is not None:
        at, _, entry_id = before.partition(":")
        cursor = (int(at), entry_id)
    entries = await server.engine.audit_page(cursor, limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    return AuditPage(
        entries=[AuditEntry(id=e.id, at=iso(e.at), actor=e.actor, role=e.role,
                            action=e.action, target=e.target, status=e.status,
                            detail=e.detail) for e in entries],
        next=f"{entries[-1].at}:{entries[-1].id}" if more else None)
