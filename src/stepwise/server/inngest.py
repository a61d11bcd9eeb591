"""The routes the Inngest SDKs call, in Inngest's protocol (not part of this API's schema):
an app's sync (`/fn/register`), events as the SDKs send them (`/e/{key}`), a run's data
for an SDK told `use_api` (`/v0/runs/...`), signals (`/v1/signals`) and the steps a 4.x
TypeScript app ran within one call (`/v1/checkpoint/{run_id}/async`). Refusals carry
`status` in their bodies too, as Inngest's do: the SDKs read the outcome from there."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from .. import metrics
from ..engine import RunState
from ..engine.definitions import AppSource
from ..errors import LeaseLost, RunCancelled
from ..events import sessions_meta
from ..payloads import PayloadError, dumps, loads
from ..remote import checkpoint, inband, protocol, registration
from .errors import ApiError
from .inputs import read_body, read_json, validate_events
from .models import NO_NUL, JSONText, RunId
from .state import Server, ServerDep

log = logging.getLogger("stepwise.server")
router = APIRouter(default_response_class=JSONText, include_in_schema=False)



def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status)


def _server_kind_refusal(expected: str | None, server: Server) -> JSONResponse | None:
    """A refusal when the app expects another kind of server (dev or cloud) than this one."""
    if expected in (None, "", server.access.server_kind):
        return None
    return _refused(400, f"the app expects a {expected!r} server; this one is "
                         f"{server.access.server_kind!r} (`stepwise dev` is 'dev', "
                         "`stepwise server` 'cloud')")


def _log_sync(synced: registration.SyncedApp) -> None:
    log.info("synced SDK app %s (%s, %s) at %s: %d functions", synced.app_id,
             synced.sdk, synced.framework, synced.url, len(synced.functions))
    for warning in synced.warnings:
        log.warning("SDK app %s: %s", synced.app_id, warning)
    for definition in synced.functions:
        for problem in definition.problems:
            log.warning("SDK app %s: function %s cannot run: %s", synced.app_id,
                        definition.id, problem)


@router.post("/fn/register")
async def register_sdk_app(request: Request, server: ServerDep) -> JSONResponse:
    """Sync an SDK app: store its functions, each with the URL that runs it."""
    try:
        raw = await read_body(request, server.limits.request_bytes)
    except ApiError as exc:
        return _refused(exc.status, exc.message)
    try:  # a sync may be megabytes: read on a thread, so the server answers meanwhile
        body = await asyncio.to_thread(loads, raw)
    except PayloadError as exc:
        return _refused(400, f"request body is not valid JSON: {exc}")
    refusal = _server_kind_refusal(request.headers.get("x-inngest-expected-server-kind"),
                                   server)
    if refusal is not None:
        return refusal
    try:
        synced = await asyncio.to_thread(registration.parse, body)
    except registration.RegistrationError as exc:
        return _refused(400, f"cannot sync the app: {exc}")
    refusal = _host_refusal(server, synced)
    if refusal is not None:
        return refusal
    key = server.access.signing_key
    if key is not None and not server.access.dev_mode and not server.access.unconfirmed_syncs:
        # The post proves only that its sender saw the key's hash once: the app at its URL
        # is asked, and its signed answer is what is stored (see `remote.inband`).
        try:
            answer = await _confirmations(request).confirm(
                synced.url, key, server.access.signing_fallback, server.clock.now_ms() // 1000)
            synced = await asyncio.to_thread(registration.parse, answer)
        except inband.InBandError as exc:
            log.warning("sync of the app at %s refused: %s", synced.url, exc.message)
            return _refused(exc.status, f"cannot sync the app: {exc.message}")
        except registration.RegistrationError as exc:
            return _refused(400, f"cannot sync the app: its in-band answer: {exc}")
        refusal = _host_refusal(server, synced)
        if refusal is not None:
            return refusal
    modified = await server.engine.register(synced.app_id, synced.functions, AppSource(
        synced.sdk, synced.url, synced.framework, synced.warnings))
    if modified:
        _log_sync(synced)
    return JSONResponse({"ok": True, "modified": modified, "app_id": synced.app_id})


def _host_refusal(server: Server, synced: registration.SyncedApp) -> JSONResponse | None:
    """A 403 when the app's URL or a function's is at a host not allowed (--sdk-allow-host)."""
    host = server.access.sdk_host_refused(
        [synced.url, *(str(d.url) for d in synced.functions if d.url)])
    if host is None:
        return None
    log.warning("sync of app %r refused: host %r is not allowed (--sdk-allow-host)",
                synced.app_id, host)
    return _refused(403, f"cannot sync the app: {host!r} is not among the hosts this "
                         "server allows SDK apps at (--sdk-allow-host)")


def _confirmations(request: Request) -> inband.Confirmations:
    """This server's in-band syncs (made on first use: only servers with a signing key)."""
    state = request.app.state
    if not hasattr(state, "sdk_confirmations"):
        state.sdk_confirmations = inband.Confirmations()
    return cast(inband.Confirmations, state.sdk_confirmations)


async def _run_state(server: Server, run_id: str) -> RunState:
    """The run an SDK reads while executing it; any other is answered as absent (404), so the
    signing key reads no Python function's run, nor any run not executing now."""
    state = await server.engine.load_for_sdk(run_id)
    if state is None:
        raise ApiError(404, f"run {run_id} not found among the SDK runs executing now")
    return state


@router.get("/v0/runs/{run_id}/batch")
async def sdk_run_events(run_id: RunId, server: ServerDep) -> list[dict[str, Any]]:
    """For an SDK told `use_api`: the run's events."""
    return protocol.run_events(await _run_state(server, run_id))


@router.get("/v0/runs/{run_id}/actions")
async def sdk_run_steps(run_id: RunId, server: ServerDep) -> dict[str, Any]:
    """For an SDK told `use_api`: the run's memoized steps, by hashed id."""
    return protocol.memo(await _run_state(server, run_id)).steps


def _sessions(items: list[Any]) -> list[str | None]:
    """Each event's sessions (`meta`, which apps pass on), stored as JSON; ValueError (or
    PayloadError) naming a bad one."""
    metas: list[str | None] = []
    for i, item in enumerate(items):
        meta = sessions_meta(item.get("meta"), f"events[{i}]") \
            if isinstance(item, dict) else None
        metas.append(None if meta is None else dumps(meta, f"events[{i}].meta"))
    return metas


def _without_extras(items: list[Any]) -> list[Any]:
    """The events without `meta` (read by `_sessions`) and what the SDKs also send: `user`
    (Inngest's, deprecated) and `v`, accepted and not stored."""
    return [{k: v for k, v in item.items() if k not in ("user", "v", "meta")}
            if isinstance(item, dict) else item for item in items]


def _sdk_refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ids": [], "status": status, "error": message}, status)


@router.post("/e/{event_key}")
async def sdk_events(event_key: Annotated[str, Path(pattern=NO_NUL)], request: Request,
                     server: ServerDep) -> JSONResponse:
    """Events as the SDKs send them; answers `{"ids", "status"}` like Inngest."""
    del event_key  # checked by the access gate
    try:
        raw = loads(await read_body(request, server.limits.request_bytes))
    except PayloadError as exc:
        return _sdk_refusal(400, f"request body is not valid JSON: {exc}")
    items = raw if isinstance(raw, list) else [raw]
    try:
        metas = _sessions(items)
    except (ValueError, PayloadError) as exc:
        return _sdk_refusal(400, str(exc))
    items = _without_extras(items)
    try:
        events = validate_events(items if isinstance(raw, list) else items[0],
                                 server.limits, server.clock.now_ms())
    except ApiError as exc:
        return _sdk_refusal(exc.status, exc.message)
    events = [replace(ev, meta=meta) if meta else ev
              for ev, meta in zip(events, metas, strict=True)]
    ids = await server.engine.ingest(events)
    metrics.EVENTS_RECEIVED.inc(len(ids))
    return JSONResponse({"ids": ids, "status": 200})


@router.post("/v1/signals")
async def send_signal(request: Request, server: ServerDep) -> JSONResponse:
    """Resume the run step waiting for a signal (`step.waitForSignal`), as Inngest's REST API
    does: `{"signal", "data"}` in, `{"data": {"run_id"}}` out; 404 when no run waits for it."""
    body = await read_json(request, server.limits.event_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be an object: {\"signal\": NAME, \"data\": ...}")
    signal = body.get("signal")
    if not isinstance(signal, str) or not signal or len(signal) > protocol.MAX_SIGNAL_CHARS \
            or "\x00" in signal:
        raise ApiError(400, f"signal must be a name of 1 to {protocol.MAX_SIGNAL_CHARS} "
                            "characters")
    try:
        data = dumps(body.get("data"), "signal data")
    except PayloadError as exc:
        raise ApiError(400, str(exc)) from None
    run_id = await server.engine.signal(signal, data)
    if run_id is None:
        raise ApiError(404, f"no run waits for signal {signal!r} now")
    log.info("signal %r resumed run %s", signal[:100], run_id)
    return JSONResponse({"data": {"run_id": run_id}})


@router.post("/v1/checkpoint/{run_id}/async")
async def checkpoint_steps(run_id: RunId, request: Request, server: ServerDep) -> JSONResponse:
    """Steps an SDK ran within one call (checkpointing, inngest-js 4.x), stored as if the call
    had answered them, under the lease of the execution that made the call (`ctx.qi_id`):
    409 when that lease is lost (another worker took the run, or it was cancelled or has
    ended), and nothing is stored."""
    try:
        raw = await read_body(request, server.limits.request_bytes)
        body = loads(raw)
    except ApiError as exc:
        return _refused(exc.status, exc.message)
    except PayloadError as exc:
        return _refused(400, f"request body is not valid JSON: {exc}")
    try:
        found = checkpoint.parse(body, run_id, server.clock.now_ms(),
                                 server.limits.step_output_bytes)
    except checkpoint.CheckpointError as exc:
        return _refused(exc.status, exc.message)
    target = await server.engine.checkpoint_target(run_id)
    if target is None:
        return _refused(409, f"run {run_id} is not an SDK run executing now (it ended, waits, "
                             "was cancelled or does not exist): nothing stored")
    if found.function_id != target.function_id:
        return _refused(400, f"fn_id {found.function_id[:200]!r} is not the function of run "
                             f"{run_id}")
    if not found.steps:
        return JSONResponse({"run_id": run_id, "stored": 0})
    try:
        await server.engine.apply(found.lease, found.outcomes(target.ended, target.retrying),
                                  last=False)
    except (LeaseLost, RunCancelled) as exc:
        log.info("checkpoint of run %s refused: %s", run_id, exc)
        return _refused(409, f"stale checkpoint, nothing stored: {exc}")
    return JSONResponse({"run_id": run_id, "stored": len(found.steps)})
