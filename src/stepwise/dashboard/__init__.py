"""The dashboard: a single-page app in plain JavaScript that reads the JSON API.

It ships inside the package (no build step, no CDN): `static/app.js` and `static/app.css`
are written by hand; uPlot, for the functions page's charts, is vendored under
`static/vendor`. Every page has its own URL (`PAGES`); the server answers each with the same
shell and the script renders the page for the address.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

#: The dashboard's addresses (Starlette path syntax); the API lives under /api/v1.
PAGES = ("/", "/runs", "/runs/{run_id}", "/failed", "/events", "/events/{event_id}",
         "/functions", "/apps", "/workers", "/audit")
#: Where `static/` is served.
ASSETS = "/assets"


@cache
def shell() -> str:
    return resources.files(__name__).joinpath("index.html").read_text()
