"""How many HTTP requests are served at once: past the bound, a quick 503 with Retry-After.

Without a bound, an overloaded server accepts everything, answers late, and clients that time
out resend while the server still works on what they abandoned. A prompt refusal lets them back
off instead. `/healthz` is always answered, so an orchestrator can tell "busy" from "dead".

A request's body is read before it takes a slot, under a deadline (10 s, extended by a second
per 500 bytes received, 60 s at most, as Apache's mod_reqtimeout does) and within a bound of
its own (bodies being read, bytes held). Read inside the slots, 256 clients sending a byte every
few seconds held every slot, and every request was refused for as long as they went on; now
they hold only body-reader places for at most seconds, and requests without a body (reads,
the dashboard, /healthz) are never refused because of them.

A long-lived stream (the dashboard's live updates, `STREAM_PATHS`) would hold a slot for as
long as a page stays open, so a few hundred open tabs would refuse every other request: it
takes none, and is bounded by a count of its own where it is served (`server/live.py`).
"""

from __future__ import annotations

import asyncio
import time

from .access import ASGIApp, Message, Receive, Scope, Send, respond

#: Requests handled at once by one server process, by default.
DEFAULT_MAX_IN_FLIGHT = 256
#: A body must arrive within BODY_TIMEOUT_S plus a second per BODY_MIN_RATE bytes received,
#: and within BODY_MAX_TIMEOUT_S in any case.
BODY_TIMEOUT_S = 10.0
BODY_MIN_RATE = 500
BODY_MAX_TIMEOUT_S = 60.0
#: Bodies being read at once, and the bytes they may hold together.
MAX_BODY_READERS = 1024
MAX_BODY_BUFFER = 256 * 1024 * 1024
#: Streams that stay open while a page does, outside the in-flight bound (they have no body).
STREAM_PATHS = frozenset({"/api/v1/live"})


class Admission:
    """ASGI middleware: at most `max_in_flight` HTTP requests in progress."""

    def __init__(self, app: ASGIApp, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 retry_after_s: int = 1, *, max_body_bytes: int = 10 * 1024 * 1024,
                 body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        """`max_body_bytes`: the largest body read (a declared larger one is left to the app,
        which answers 413 from the header)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after = str(retry_after_s).encode()
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.in_flight = 0
        self.refused = 0
        self.body_readers = 0
        self.body_buffered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz" or (
                scope["path"] in STREAM_PATHS and scope["method"] == "GET"):
            await self.app(scope, receive, send)
            return
        declared = _body_length(scope)
        if declared != 0 and (declared is None or declared <= self.max_body_bytes):
            if self.body_readers >= MAX_BODY_READERS:
                self.refused += 1
                await respond(send, 503, f"server busy: {self.body_readers} request bodies "
                              "being received; retry later", [(b"retry-after", self.retry_after)])
                return
            self.body_readers += 1
            try:
                body = await self._read_body(receive, send)
            finally:
                self.body_readers -= 1
            if body is None:
                return  # answered already
            receive = _replay(body, receive)
        await self._admit(scope, receive, send)

    async def _read_body(self, receive: Receive, send: Send) -> list[Message] | None:
        """The body's messages, read under the deadline and the byte bounds; None once
        answered (408, 413, 503)."""
        began = time.monotonic()
        messages: list[Message] = []
        size = 0
        try:
            while True:
                deadline = began + min(self.body_timeout_s + size / BODY_MIN_RATE,
                                       BODY_MAX_TIMEOUT_S)
                try:
                    message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                except TimeoutError:
                    await respond(send, 408, f"the request body did not arrive in time "
                                  f"({size} bytes in {time.monotonic() - began:.0f} s)",
                                  [(b"connection", b"close")])
                    return None
                messages.append(message)
                if message["type"] != "http.request":
                    return messages  # the client left: the app sees it as it would have
                chunk = len(message.get("body", b""))
                size += chunk
                self.body_buffered += chunk
                if size > self.max_body_bytes:
                    await respond(send, 413, f"request body is over the limit of "
                                  f"{self.max_body_bytes} bytes", [(b"connection", b"close")])
                    return None
                if self.body_buffered > MAX_BODY_BUFFER:
                    await respond(send, 503, "server busy receiving request bodies; retry later",
                                  [(b"retry-after", self.retry_after), (b"connection", b"close")])
                    return None
                if not message.get("more_body"):
                    return messages
        finally:
            self.body_buffered -= size

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
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


def _body_length(scope: Scope) -> int | None:
    """The declared body length: 0 without a body, None when unknown (chunked, or a
    Content-Length that is not a number, which the app refuses after reading)."""
    length = 0
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
        if name == b"transfer-encoding":
            length = -1
    return None if length else 0


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then what the client sends next."""
    queued = list(messages)

    async def replayed() -> Message:
        return queued.pop(0) if queued else await receive()
    return replayed
