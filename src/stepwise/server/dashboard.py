"""The dashboard's pages and files: every page address answers the same shell (its script
renders the page for the address), and `static/` is served under /assets. Neither is part
of the API's schema. A browser asking for an address nothing serves gets the shell too, as a
404, so the dashboard says "Page not found" in its own frame instead of showing raw JSON."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.routing import Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import dashboard as pages
from ..access import wants_page

router = APIRouter(include_in_schema=False)


async def page() -> HTMLResponse:
    return HTMLResponse(pages.shell(), headers={"Cache-Control": "no-cache"})


for _path in pages.PAGES:
    router.add_api_route(_path, page, methods=["GET"])


def mount_assets(api: FastAPI) -> None:
    """Serve the dashboard's static files (after every route: a mount takes its whole path),
    and its not-found page where nothing else answers."""
    api.mount(pages.ASSETS, StaticFiles(packages=[("stepwise.dashboard", "static")]),
              name="assets")
    api.router.default = NotFoundPage(api.router)


class NotFoundPage:
    """What the router does when no route matches (Starlette's `Router.default`, reached
    after the 405 check): a browser navigating to a page path gets the shell with status 404
    (its script shows the not-found view); the API's paths and every other client keep the
    JSON 404 of `errors`, so programs never receive HTML."""

    def __init__(self, router: Router) -> None:
        self.json_not_found: ASGIApp = router.not_found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and wants_page(scope):
            response = HTMLResponse(pages.shell(), status_code=404,
                                    headers={"Cache-Control": "no-cache"})
            await response(scope, receive, send)
            return
        await self.json_not_found(scope, receive, send)
