"""`create_server`: one FastAPI app made of its routers, its error answers and its
schema, behind the access gate and the admission bound."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..access import Access, Gate
from ..admission import DEFAULT_MAX_IN_FLIGHT, Admission
from ..clock import Clock
from ..engine import Engine
from ..payloads import Limits
from ..storage import Storage
from . import api, dashboard, errors, inngest, openapi, rest_v1, retention
from .models import JSONText
from .state import Server


def create_server(storage: Storage, *, access: Access | None = None,
                  limits: Limits | None = None, clock: Clock | None = None,
                  max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> Any:
    """The ASGI app: the API behind the access gate (credentials, hosts, body types), then the
    admission bound (bodies read under a deadline, requests in flight). Without `access`,
    everything is open (tests, dev mode sets its own)."""
    limits = limits or Limits()
    access = access or Access(dev_mode=True)
    app = FastAPI(title="stepwise", version="1", docs_url="/docs", redoc_url=None,
                  default_response_class=JSONText)
    app.state.server = Server(Engine(storage, clock or Clock()), limits, access)
    errors.install(app)
    app.include_router(api.router)
    app.include_router(retention.router)
    app.include_router(inngest.router)
    app.include_router(rest_v1.router)
    app.include_router(dashboard.router)
    dashboard.mount_assets(app)
    schema = openapi.schema(app, limits)
    app.openapi = lambda: schema  # type: ignore[method-assign]
    # The gate refuses on headers alone, so only a client with the right credentials gets
    # as far as having its body read (under admission's deadline and bounds).
    return Gate(Admission(errors.KeepConnection(app), max_in_flight,
                          max_body_bytes=limits.request_bytes), access)
