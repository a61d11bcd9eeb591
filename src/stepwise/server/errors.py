"""Every failure answers `{"error": "<one line>"}` with its status: the API's own refusals
(`ApiError`), the engine's (`NotFound` 404, `Conflict` 409), FastAPI's (bad input is 400, not
422; 405 keeps its `Allow`), storage down (503 with `Retry-After`) and anything else (500,
logged)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..engine import Conflict, NotFound
from ..storage import StorageUnavailable

log = logging.getLogger("stepwise.server")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=409)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                        headers=headers)


def allowed_methods(request: Request) -> str:
    """The methods of every route of this path, for a 405's Allow. Starlette names only the
    first route whose pattern matches, so `/api/v1/runs/{run_id}` (GET) shadowed
    `/api/v1/runs/cancel` (POST), and one of `/api/v1/events`'s two methods went unnamed.
    Routes spelled as this path win over patterns with parameters."""
    path = request.url.path
    matching = [route for route in _routes(request.app)
                if getattr(route, "methods", None) and route.path_regex.match(path)]
    exact = [route for route in matching if route.path == path]
    methods = {method for route in (exact or matching) for method in route.methods}
    return ", ".join(sorted(methods))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse({"error": "; ".join(parts)}, status_code=400)


async def _unavailable(_: Request, exc: StorageUnavailable) -> JSONResponse:
    log.warning("storage unavailable: %s", exc)
    return JSONResponse({"error": f"storage unavailable, try again: {exc}"},
                        status_code=503, headers={"Retry-After": "5"})


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error")
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the "
                                  "server log"}, status_code=500)


_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    ApiError: _api_error, NotFound: _not_found, Conflict: _conflict, HTTPException: _http_error,
    RequestValidationError: _validation_error, StorageUnavailable: _unavailable,
    Exception: _internal,
}


class KeepConnection:
    """ASGI: Starlette answers an unexpected error with the 500 above, then raises it again for
    the server to log, and uvicorn then closes the connection, so a client's next request on
    its kept-alive connection fails. `_internal` logged it already: once the answer went out,
    the error stops here."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def watched(message: Any) -> None:
            nonlocal answered
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if not answered:
                raise


class JsonErrorsH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering a request it cannot parse (a NUL in the path, a
    bad Content-Length) with our JSON error shape instead of a text/plain 400; pass it as
    `uvicorn.Config(http=JsonErrorsH11)`."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"invalid HTTP request: {msg}"}).encode()
        for event in (h11.Response(status_code=400, reason=b"Bad Request", headers=[
                          (b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]),
                      h11.Data(data=body), h11.EndOfMessage()):
            output = self.conn.send(event)
            if output:
                self.transport.write(output)
        self.transport.close()


def _routes(app: Any) -> list[Any]:
    """The app's routes, those of its included routers in place of the router (FastAPI lists
    an included router as one entry)."""
    found: list[Any] = []
    for route in app.routes:
        original = getattr(route, "original_router", None)
        found.extend(_routes(original) if original is not None else [route])
    return found


def install(api: FastAPI) -> None:
    """Answer every failure of `api` as above."""
    for exc_class, handler in _HANDLERS.items():
        api.add_exception_handler(exc_class, handler)
