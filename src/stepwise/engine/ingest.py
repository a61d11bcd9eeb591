"""Events in: store each once, start a run of every function listening to it, and deliver it
to the runs waiting for it, all in the caller's transaction."""

from __future__ import annotations

from typing import Any

from ..definition import EventTrigger
from ..events import StoredEvent
from ..flow import FlowOptions
from ..storage import Tx
from . import definitions, flow_control, waits


def ingest_events(tx: Tx, events: list[StoredEvent] | tuple[StoredEvent, ...],
                  now: int) -> list[str]:
    """Store events not stored yet (an id already stored is an idempotent resend) and start
    their runs; return every event's id. The events' insert (one statement for them all),
    the functions their names trigger and whether any run waits for those names are one
    round trip on PostgreSQL; the runs' inserts (one statement for those without flow
    control) go with the COMMIT (`Tx.defer`)."""
    if not events:
        return []
    names = sorted({ev.name for ev in events})
    inserted, triggered, waited_rows = tx.each([
        ("insert_events", {"ids": [ev.id for ev in events], "names": [ev.name for ev in events],
                           "datas": [ev.data for ev in events], "ts": [ev.ts for ev in events],
                           "traces": [ev.trace for ev in events], "now": now}),
        ("functions_for_events", {"names": names}), ("names_waited", {"names": names})])
    new = {row["id"] for row in inserted}
    plain = flow_control.PlainRuns(now)
    routes: dict[str, list[tuple[str, str, FlowOptions, list[EventTrigger]]]] = {}
    for r in triggered:
        definition = definitions.decode(r["definition"])
        triggers = [t for t in definition.triggers
                    if isinstance(t, EventTrigger) and t.event == r["event_name"]]
        routes.setdefault(r["event_name"], []).append(
            (r["app_id"], r["function_id"], definition.flow, triggers))
    # Whether a run waits for a name; missing: not known (a run started here may wait).
    waited: dict[str, bool] = {name: False for name in names}
    waited.update((r["name"], True) for r in waited_rows)
    for ev in events:
        if ev.id not in new:
            continue
        new.discard(ev.id)  # an id repeated in one call is stored and routed once
        event_doc: dict[str, Any] | None = None
        for app_id, function_id, flow, triggers in routes.get(ev.name, ()):
            if any(t.expression is not None for t in triggers):  # an SDK trigger's filter
                if event_doc is None:
                    event_doc = waits.event_json({"name": ev.name, "data": ev.data,
                                                  "id": ev.id, "ts": ev.ts})
                if not any(t.matches(event_doc) for t in triggers):
                    continue
            if flow.empty:
                plain.add(app_id, function_id, ev.id, max(now, ev.ts))
            else:
                flow_control.create_run(tx, app_id, function_id, ev.id, max(now, ev.ts), now,
                                        flow=flow)
            for cancel in flow.cancel_on:
                waited.pop(cancel.event, None)  # the run may now wait for that name
        if ev.name not in waited:
            waited[ev.name] = tx.one("any_wait", name=ev.name) is not None
        if waited[ev.name]:
            waits.deliver(tx, ev, now)
    plain.insert(tx)
    return [ev.id for ev in events]
