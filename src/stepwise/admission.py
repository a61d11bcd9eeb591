"""How many HTTP requests are served at once: past the bound, a quick 503 with Retry-After.

Without a bound, an overloaded server accepts everything, answers late, and clients that time
out resend while the server still works on what they abandoned. A prompt refusal lets them back
off instead. `/healthz` is always answered, so an orchestrator can tell "busy" from "dead".
"""

from __future__ import annotations

from .access import ASGIApp, Receive, Scope, Send, respond

#: Requests handled at once by one server process, by default.
DEFAULT_MAX_IN_FLIGHT = 256


class Admission:
    """ASGI middleware: at most `max_in_flight` HTTP requests in progress."""

    def __init__(self, app: ASGIApp, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 retry_after_s: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            await respond(send, 503, f"server busy: {self.in_flight} requests in progress; "
                          "retry later", [(b"retry-after", self.retry_after)])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
