"""Live updates for the dashboard: `GET /api/v1/live`, a stream of server-sent events that
says "something you show changed", so open pages re-read the API only then instead of every
2 seconds each.

One `Feed` per server reads the engine's change mark (one statement of index lookups,
`change_mark` in queries.sql) every second while at least one stream is open, and sooner
after this process's storage signals new work; when the mark differs from the last one it
wakes every stream. Twenty open tabs cost the database what one does, and no tab costs it
anything while nothing changes. The mark is read from the database, so changes made through
any process on it show (another server or a worker on the same PostgreSQL).

A stream is held outside admission's in-flight bound (`admission.STREAM_PATHS`) and bounded
by `MAX_STREAMS` per server instead (past it: 503, and the page polls). It sends a comment
every `KEEPALIVE_S` so proxies keep an idle stream open, and it ends as soon as the server
begins a graceful stop: uvicorn (0.55) only asks a connection in the middle of a response to
close once the response is over, then waits for it up to its graceful-shutdown timeout, so
an open tab would hold every stop that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..admission import STREAM_PATHS
from ..engine import Engine
from .state import ServerDep

log = logging.getLogger("stepwise.live")

(PATH,) = STREAM_PATHS
#: How often the change mark is read while streams are open, and at least how long apart
#: when this process's storage signals new work sooner.
CHECK_S = 1.0
MIN_GAP_S = 0.25
#: How often a stream with nothing to say sends a comment (proxies close idle connections,
#: commonly after 30-60 s).
KEEPALIVE_S = 15.0
#: How often open streams are checked for a server that is stopping.
STOP_CHECK_S = 0.25
#: Streams open at once per server; each is a connection and a small task.
MAX_STREAMS = 512
#: How long a browser waits before reconnecting a stream that ended (EventSource `retry`).
RETRY_MS = 2000

#: What each part of the mark is about, as the `change` messages name it.
TOPICS: dict[str, tuple[str, ...]] = {
    "events": ("event_at",),
    "runs": ("created_at", "ended_at", "running", "running_epochs"),
    "steps": ("steps", "steps_final", "step_attempts"),
    "workers": ("workers", "live_workers", "workers_started", "slots_in_use"),
    "functions": ("functions", "functions_at"),
}

router = APIRouter()


class Stream:
    """One open stream: the topics changed since it last wrote, and the event that wakes it."""

    def __init__(self, receive: Any) -> None:
        # uvicorn's request-response cycle (the owner of `receive`), if that is what serves
        # us: it marks a response in progress `keep_alive = False` when the server stops.
        self.cycle = getattr(receive, "__self__", None)
        self.watch = getattr(self.cycle, "keep_alive", None) is True
        self.changed: set[str] = set()
        self.stopping = False
        self.wake = asyncio.Event()

    def server_stopping(self) -> bool:
        """The server began a graceful stop (uvicorn 0.55 clears `keep_alive`; later ones
        also set `shutting_down`, and send a disconnect that Starlette acts on)."""
        if getattr(self.cycle, "shutting_down", False) is True:
            return True
        return self.watch and getattr(self.cycle, "keep_alive", True) is False

    def tell(self, changed: list[str]) -> None:
        self.changed.update(changed)
        self.wake.set()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


class Feed:
    """The change-detection loop of one server, shared by all its streams; it runs only
    while at least one stream is open."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.streams: set[Stream] = set()
        self.reads = 0  # change marks read (tests and measurements)
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._hooked = False
        self._failing = False

    def open(self, receive: Any) -> Stream | None:
        """A new stream, or None past `MAX_STREAMS`."""
        if len(self.streams) >= MAX_STREAMS:
            return None
        stream = Stream(receive)
        self.streams.add(stream)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stepwise-live")
        return stream

    def close(self, stream: Stream) -> None:
        self.streams.discard(stream)

    async def _run(self) -> None:
        if not self._hooked:  # PostgreSQL: also the NOTIFYs of other processes
            self.engine.storage.on_new_work(self._woken.set)
            self._hooked = True
        loop = asyncio.get_running_loop()
        mark: dict[str, Any] | None = None
        last = -CHECK_S
        while self.streams:
            for stream in self.streams:
                if not stream.stopping and stream.server_stopping():
                    stream.stop()
            now = loop.time()
            due = last + (MIN_GAP_S if self._woken.is_set() else CHECK_S)
            if now >= due:
                self._woken.clear()
                last = now
                mark = await self._changes(mark)
                continue
            wait = min(due - now, STOP_CHECK_S)
            if self._woken.is_set():  # woken early: wait out the gap
                await asyncio.sleep(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), wait)

    async def _changes(self, before: dict[str, Any] | None) -> dict[str, Any] | None:
        """Read the mark and tell every stream what changed since `before`; the new mark
        (`before` while the database cannot be read)."""
        try:
            mark = await self.engine.change_mark()
        except Exception as exc:  # the database is down, say: streams stay open, and wait
            if not self._failing:
                log.warning("live updates: cannot read the change mark (%s); retrying", exc)
            self._failing = True
            return before
        self._failing = False
        self.reads += 1
        if before is not None and mark != before:
            changed = [topic for topic, keys in TOPICS.items()
                       if any(mark.get(k) != before.get(k) for k in keys)]
            for stream in self.streams:
                stream.tell(changed)
        return mark


def feed_of(request: Request, engine: Engine) -> Feed:
    """The server's one `Feed` (one per app, created with its first stream)."""
    state = request.app.state
    feed: Feed | None = getattr(state, "live_feed", None)
    if feed is None:
        feed = state.live_feed = Feed(engine)
    return feed


# Not in /openapi.json: a stream that never ends is no request-response operation, and
# clients generated from the schema (or a fuzzer) would wait on it for good.
@router.get(PATH, include_in_schema=False)
async def live(request: Request, server: ServerDep) -> Response:
    """An event stream: `ready` once, then `change` (data `{"changed": [topics]}`) whenever
    events, runs, steps, workers or functions changed, a comment every `KEEPALIVE_S`, and
    `bye` when the server stops; 503 past `MAX_STREAMS`."""
    feed = feed_of(request, server.engine)
    stream = feed.open(request.receive)
    if stream is None:
        return JSONResponse({"error": f"too many live streams open on this server "
                                      f"({MAX_STREAMS}); poll the API instead"},
                            status_code=503, headers={"Retry-After": "30"})
    return StreamingResponse(_messages(feed, stream), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache",
                                      "X-Accel-Buffering": "no"})  # nginx: do not buffer


async def _messages(feed: Feed, stream: Stream) -> AsyncIterator[str]:
    try:
        yield f"retry: {RETRY_MS}\nevent: ready\ndata: {{}}\n\n"
        while True:
            try:
                await asyncio.wait_for(stream.wake.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            stream.wake.clear()
            if stream.stopping:
                yield "event: bye\ndata: {\"reason\": \"server stopping\"}\n\n"
                return
            changed, stream.changed = sorted(stream.changed), set()
            yield f"event: change\ndata: {json.dumps({'changed': changed})}\n\n"
    finally:
        feed.close(stream)
