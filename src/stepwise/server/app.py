"""`create_server`: one FastAPI app made of its routers, its error answers and its
schema, behind the access gate and the admission bound."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..access import Access, Gate, LookupUnavailable, Principal
from ..admission import DEFAULT_MAX_IN_FLIGHT, Admission
from ..clock import Clock
from ..engine import Engine
from ..payloads import Limits
from ..storage import Storage
from ..storage.base import StorageUnavailable
from . import api, audit, dashboard, errors, gql, inngest, openapi, rest_v1, retention, signin
from .live import router as live_router
from .models import JSONText
from .state import Server, SignIn


def create_server(storage: Storage, *, access: Access | None = None,
                  limits: Limits | None = None, clock: Clock | None = None,
                  max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                  sign_in: SignIn | None = None) -> Any:
    """The ASGI app: the API behind the access gate (credentials, hosts, body types), then the
    admission bound (bodies read under a deadline, requests in flight). Without `access`,
    everything is open (tests, dev mode sets its own)."""
    limits = limits or Limits()
    access = access or Access(dev_mode=True)
    app = FastAPI(title="stepwise", version="1", docs_url="/docs", redoc_url=None,
                  default_response_class=JSONText)
    engine = Engine(storage, clock or Clock())
    app.state.server = Server(engine, limits, access, sign_in or SignIn())
    errors.install(app)
    app.include_router(api.router)
    app.include_router(retention.router)
    app.include_router(inngest.router)
    app.include_router(rest_v1.router)
    app.include_router(gql.router)
    app.include_router(live_router)
    app.include_router(audit.router)
    app.include_router(signin.router)
    app.include_router(signin.api_router)
    app.include_router(dashboard.router)
    dashboard.mount_assets(app)
    schema = openapi.schema(app, limits)
    app.openapi = lambda: schema  # type: ignore[method-assign]

    async def session(token: str) -> tuple[Principal, str] | None:
        try:
            found = await engine.find_session(token)
        except StorageUnavailable:
            raise LookupUnavailable from None
        return None if found is None else (Principal(found.actor, found.role, "session"),
                                           found.csrf)

    # The gate refuses on headers (and a session) alone, so only a client with the right
    # credentials gets as far as having its body read (under admission's deadline and
    # bounds); the audit trail, outside it, sees who the gate identified and every answer.
    return audit.AuditTrail(Gate(Admission(errors.KeepConnection(app), max_in_flight,
                                           max_body_bytes=limits.request_bytes),
                                 access, session), engine, schema["paths"])
