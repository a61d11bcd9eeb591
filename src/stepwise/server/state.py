"""What the routes share within one server (its engine, limits and access rules): one typed
object on the app's state, handed to each route as a dependency, so the routers are plain
module-level `APIRouter`s and one process may serve several servers (tests do)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, cast

from fastapi import Depends, Request

from ..access import Access
from ..clock import Clock
from ..engine import Engine
from ..payloads import Limits
from .oidc import OidcClient

#: How long a dashboard session lasts by default (`--session-hours`).
DEFAULT_SESSION_HOURS = 12


@dataclass(frozen=True)
class SignIn:
    """How this server signs browsers in (`signin`): how long a session lasts, and single
    sign-on when configured."""

    session_ms: int = DEFAULT_SESSION_HOURS * 3_600_000
    oidc: OidcClient | None = None


@dataclass(frozen=True)
class Server:
    engine: Engine
    limits: Limits
    access: Access
    signin: SignIn = field(default_factory=SignIn)

    @property
    def clock(self) -> Clock:
        return self.engine.clock


async def server(request: Request) -> Server:
    """The `Server` of the app answering `request` (a coroutine: FastAPI would run a plain
    function on a thread for every request)."""
    return cast(Server, request.app.state.server)


#: A route's parameter for its server.
ServerDep = Annotated[Server, Depends(server)]
