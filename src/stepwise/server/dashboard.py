"""The dashboard's pages and files: every page address answers the same shell (its script
renders the page for the address), and `static/` is served under /assets. Neither is part
of the API's schema."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from .. import dashboard as pages

router = APIRouter(include_in_schema=False)


async def page() -> HTMLResponse:
    return HTMLResponse(pages.shell(), headers={"Cache-Control": "no-cache"})


for _path in pages.PAGES:
    router.add_api_route(_path, page, methods=["GET"])


def mount_assets(api: FastAPI) -> None:
    """Serve the dashboard's static files (after every route: a mount takes its whole path)."""
    api.mount(pages.ASSETS, StaticFiles(packages=[("stepwise.dashboard", "static")]),
              name="assets")
