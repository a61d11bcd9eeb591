"""Events in: store each once, start a run of every function listening to it, and deliver it
to the runs waiting for it, all in the caller's transaction."""

from __future__ import annotations

from ..events import StoredEvent
from ..flow import FlowOptions
from ..storage import Tx
from . import definitions, flow_control, waits


def ingest_events(tx: Tx, events: list[StoredEvent] | tuple[StoredEvent, ...],
                  now: int) -> list[str]:
    """Store events not stored yet (an id already stored is an idempotent resend) and start
    their runs; return every event's id."""
    routes: dict[str, list[tuple[str, str, FlowOptions]]] = {}
    waited: dict[str, bool] = {}
    for ev in events:
        if tx.exec("insert_event", id=ev.id, name=ev.name, data=ev.data, ts=ev.ts, now=now,
                   trace=ev.trace) == 0:
            continue
        if ev.name not in routes:
            routes[ev.name] = [(r["app_id"], r["function_id"],
                                definitions.decode(r["definition"]).flow)
                               for r in tx.all("functions_for_event", name=ev.name)]
        for app_id, function_id, flow in routes[ev.name]:
            flow_control.create_run(tx, app_id, function_id, ev.id, max(now, ev.ts), now,
                                    flow=flow)
            for cancel in flow.cancel_on:
                waited.pop(cancel.event, None)  # the run may now wait for that name
        if ev.name not in waited:  # once per name: sends of one request do not add waits
            waited[ev.name] = tx.one("any_wait", name=ev.name) is not None
        if waited[ev.name]:
            waits.deliver(tx, ev, now)
    return [ev.id for ev in events]
