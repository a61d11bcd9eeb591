"""The HTTP server: the JSON API (described at /openapi.json), the Inngest SDKs' routes,
metrics, health and the dashboard.

Split by who calls what, so each part reads on its own: `api` (the public API, a router),
`inngest` (the SDKs' protocol, a router), `dashboard` (pages and files); `models` holds the
JSON shapes (a public contract) and `convert` builds them from storage rows; `inputs` reads
bodies and queries, `errors` turns failures into answers, `openapi` documents it all, and
`app` assembles one server. The routers are module-level: what they share (engine, limits,
access) reaches them as a typed dependency (`state.Server`), not through a closure.
"""

from __future__ import annotations

from .app import create_server
from .errors import ApiError
from .inputs import validate_events

__all__ = ["ApiError", "create_server", "validate_events"]
