"""Events in: store each once, start a run of every function listening to it, and deliver it
to the runs waiting for it, all in the caller's transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from ..definition import EventTrigger, trigger_names
from ..events import StoredEvent, event_json
from ..flow import FlowOptions
from ..storage import Tx, search
from . import definitions, flow_control, lifecycle, waits

#: A function an event name triggers: its app, id, flow control, and its triggers on the name.
Route = tuple[str, str, FlowOptions, list[EventTrigger]]


class Routes:
    """The functions each event name triggered when last read, and whether a run waited for
    it: where statements cost round trips, the common ingest (names whose functions have no
    flow control, that no run waits for) routes from here and stores events and runs in one
    statement, which checks in the database that this is still true (`ingest_routed`)."""

    MAX_NAMES = 1024

    def __init__(self) -> None:
        # name -> (routes, fingerprint parts, whether some run waited for it)
        self._names: dict[str, tuple[list[Route], list[tuple[str, ...]], bool]] = {}

    def learn(self, names: list[str], triggered: list[dict[str, Any]],
              waited: dict[str, bool]) -> dict[str, list[Route]]:
        """Keep what a read of `functions_for_events` answered for `names`; answer the routes."""
        routes = _routes_of(names, triggered)
        rows: dict[str, list[tuple[str, ...]]] = {}
        for r in triggered:
            rows.setdefault(r["event_name"], []).append((
                r["event_name"], r["app_id"], r["function_id"],
                hashlib.sha256(r["definition"].encode()).hexdigest()))
        if len(self._names) + len(names) > self.MAX_NAMES:
            self._names.clear()
        for name in names:
            parts = [part for trigger in trigger_names(name) for part in rows.get(trigger, ())]
            self._names[name] = (routes[name], parts, waited.get(name, True))
        return routes

    def plan(self, names: list[str]) -> tuple[dict[str, list[Route]], str] | None:
        """The routes of `names` and their fingerprint, when every name is known, its
        functions have no flow control and no run waited for it; else None."""
        routes: dict[str, list[Route]] = {}
        parts: list[tuple[str, ...]] = []
        for name in names:
            known = self._names.get(name)
            if known is None or known[2] or not all(r[2].empty for r in known[0]):
                return None
            routes[name] = known[0]
            parts.extend(known[1])
        return routes, self.fingerprint(sorted(set(parts)))  # wildcards two names share

    @staticmethod
    def fingerprint(parts: list[tuple[str, ...]]) -> str:
        """As `ingest_routed` computes it: each route's event name, app and function
        (length-prefixed, so no two route sets read the same) and definition's SHA-256, in
        bytewise order (UTF-8's order is code points')."""
        return ",".join(" ".join(f"{len(v)}:{v}" for v in p[:3]) + " " + p[3]
                        for p in sorted(parts))


def _routes_of(names: list[str], triggered: list[dict[str, Any]]) -> dict[str, list[Route]]:
    """The routes of each of `names`, from the rows of `functions_for_events` (read for their
    `trigger_names`): a function is routed once per name, with its triggers taking it."""
    by_trigger: dict[str, list[dict[str, Any]]] = {}
    for r in triggered:
        by_trigger.setdefault(r["event_name"], []).append(r)
    routes: dict[str, list[Route]] = {}
    for name in names:
        found: dict[tuple[str, str], Route] = {}
        for trigger_name in trigger_names(name):
            for r in by_trigger.get(trigger_name, ()):
                definition = definitions.decode(r["definition"])
                key = (r["app_id"], r["function_id"])
                taking = [t for t in definition.triggers
                          if isinstance(t, EventTrigger) and t.event == trigger_name]
                if key in found:
                    taking = [*found[key][3], *taking]
                found[key] = (r["app_id"], r["function_id"], definition.flow, taking)
        routes[name] = list(found.values())
    return routes


def lookup_names(names: list[str]) -> list[str]:
    """The trigger names to read for events of `names` (theirs and the wildcards on them)."""
    return sorted({t for name in names for t in trigger_names(name)})


def _matching(ev: StoredEvent, routes: list[Route]) -> Iterator[Route]:
    """The routes whose triggers take this event (an SDK trigger may filter by expression)."""
    event_doc: dict[str, Any] | None = None
    for route in routes:
        triggers = route[3]
        if any(t.expression is not None for t in triggers):
            if event_doc is None:
                event_doc = event_json({"name": ev.name, "data": ev.data, "id": ev.id,
                                        "ts": ev.ts})
            if not any(t.matches(event_doc) for t in triggers):
                continue
        yield route


def ingest_events(tx: Tx, events: list[StoredEvent] | tuple[StoredEvent, ...],
                  now: int, known: Routes | None = None) -> list[str]:
    """Store events not stored yet (an id already stored is an idempotent resend) and start
    their runs; return every event's id. The events' insert (one statement for them all),
    the functions their names trigger and whether any run waits for those names are one
    round trip on PostgreSQL; the runs' inserts (one statement for those without flow
    control) go with the COMMIT (`Tx.defer`). With `known` routes that still hold, the
    whole is one statement sent with the COMMIT (`_ingest_routed`)."""
    if not events:
        return []
    names = sorted({ev.name for ev in events})
    if not tx.round_trips:
        known = None  # nothing to save: every ingest reads its routes (SQLite)
    if known is not None:
        planned = known.plan(names)
        if planned is not None and _ingest_routed(tx, events, now, names, *planned):
            return [ev.id for ev in events]
    inserted, triggered, waited_rows = tx.each([
        ("insert_events", {**_event_columns(events), "now": now}),
        ("functions_for_events", {"names": lookup_names(names)}),
        ("names_waited", {"names": names})])
    new = {row["id"] for row in inserted}
    plain = flow_control.PlainRuns(now)
    announced: list[StoredEvent] = []
    # Whether a run waits for a name; missing: not known (a run started here may wait).
    waited: dict[str, bool] = {name: False for name in names}
    waited.update((r["name"], True) for r in waited_rows)
    routes = (known.learn(names, triggered, waited) if known is not None else
              _routes_of(names, triggered))
    for ev in events:
        if ev.id not in new:
            continue
        new.discard(ev.id)  # an id repeated in one call is stored and routed once
        terms: list[str] | None = None
        for app_id, function_id, flow, _triggers in _matching(ev, routes.get(ev.name, [])):
            if flow.empty:
                if terms is None:
                    terms = search.event_terms(ev.name, ev.data)
                plain.add(app_id, function_id, ev.id, max(now, ev.ts), terms)
            else:
                flow_control.create_run(tx, app_id, function_id, ev.id, max(now, ev.ts), now,
                                        flow=flow, announced=announced, event=ev)
            for cancel in flow.cancel_on:
                waited.pop(cancel.event, None)  # the run may now wait for that name
        if ev.name not in waited:
            waited[ev.name] = tx.one("any_wait", name=ev.name) is not None
        if waited[ev.name]:
            announced.extend(waits.deliver(tx, ev, now))
    plain.insert(tx)
    ingest_events(tx, announced, now)  # the ends of runs those events (or singletons) cancelled
    return [ev.id for ev in events]


def announce(tx: Tx, ended: lifecycle.Ended | None, now: int) -> bool:
    """Ingest what a run's end announces (`lifecycle.finish`, `lifecycle.cancel`); False when
    nothing ended."""
    if ended is None:
        return False
    ingest_events(tx, ended.events, now)
    return True


def _ingest_routed(tx: Tx, events: list[StoredEvent] | tuple[StoredEvent, ...], now: int,
                   names: list[str], routes: dict[str, list[Route]], fingerprint: str) -> bool:
    """The events and their runs as `routes` says, in one statement committed with it; False
    (nothing written) when the routes no longer hold: the caller then ingests the general
    way, in a transaction of its own."""
    plain = flow_control.PlainRuns(now)
    routed: set[str] = set()
    for ev in events:
        if ev.id in routed:
            continue  # an id repeated in one call is stored (the first) and routed once
        routed.add(ev.id)
        terms: list[str] | None = None
        for app_id, function_id, _flow, _triggers in _matching(ev, routes.get(ev.name, [])):
            if terms is None:
                terms = search.event_terms(ev.name, ev.data)
            plain.add(app_id, function_id, ev.id, max(now, ev.ts), terms)
    columns = plain.columns
    [[row]] = tx.commit_with([("ingest_routed", {
        **_event_columns(events), "route_names": lookup_names(names), "routes": fingerprint,
        "now": now,
        "run_ids": columns["ids"], "run_apps": columns["app_ids"],
        "run_functions": columns["function_ids"], "run_events": columns["event_ids"],
        "run_available_ats": columns["available_ats"], "run_terms": plain.terms})])
    return bool(row["ok"])


def _event_columns(events: list[StoredEvent] | tuple[StoredEvent, ...]) -> dict[str, list[Any]]:
    """The events as the parallel lists `insert_events` and `ingest_routed` take."""
    return {"ids": [ev.id for ev in events], "names": [ev.name for ev in events],
            "datas": [ev.data for ev in events], "ts": [ev.ts for ev in events],
            "traces": [ev.trace for ev in events], "metas": [ev.meta for ev in events]}
