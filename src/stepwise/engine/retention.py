"""Retention: which finished runs, and which events, are deleted, a small batch at a time.

A finished run is kept for a window after it ended: its function's own (`Retention`), else
the server's setting; `completed` for completed, cancelled and skipped runs, `failed` for
failed ones (the dead-letter list, kept longer by default). With a run go its steps, failed
attempts and log lines, and the events no other run holds. Whatever its age, nothing goes that
something still needs: an unfinished run (running, sleeping, waiting, debounced, retrying,
in a batch) and its events, a run an unexpired idempotency key points at, an event any kept
run holds. Events that started no run go after the server's `completed` window.

Each operation is one short transaction over one page, so that SQLite's writer is never held
long: reading a page is a read, and a deletion re-checks what it deletes (a run replayed since
the page was read is running again, and kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..payloads import loads
from ..status import TERMINAL_RUN, RunStatus
from ..storage import Tx
from . import definitions, flow_control, ingest, lifecycle

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Windows:
    """How long finished runs are kept after they ended, in ms; None: forever."""

    completed_ms: int | None
    failed_ms: int | None

    def of(self, status: str) -> int | None:
        return self.failed_ms if status == RunStatus.failed else self.completed_ms

    def shortest(self) -> int | None:
        kept = [w for w in (self.completed_ms, self.failed_ms) if w is not None]
        return min(kept) if kept else None


#: The server's windows until an operator sets them: completed runs 30 days, failed ones 90.
DEFAULT_WINDOWS = Windows(30 * DAY_MS, 90 * DAY_MS)
_SETTINGS = {"completed_ms": "retention.completed_ms", "failed_ms": "retention.failed_ms"}
_FOREVER = "forever"


def stored_windows(tx: Tx) -> Windows:
    """The server's windows as stored (`DEFAULT_WINDOWS` where none is)."""
    found: dict[str, int | None] = {}
    for attr, name in _SETTINGS.items():
        row = tx.one("get_setting", name=name)
        if row is None:
            found[attr] = getattr(DEFAULT_WINDOWS, attr)
        else:
            found[attr] = None if row["value"] == _FOREVER else int(row["value"])
    return Windows(**found)


def store_windows(tx: Tx, windows: Windows) -> Windows:
    for attr, name in _SETTINGS.items():
        value = getattr(windows, attr)
        tx.exec("put_setting", name=name, value=_FOREVER if value is None else str(value))
    return windows


@dataclass(frozen=True)
class Plan:
    """The windows one pass applies: the server's, and those of functions with their own."""

    server: Windows
    own: dict[tuple[str, str], Windows] = field(default_factory=dict)

    def cutoff(self, app_id: str, function_id: str, status: str, now: int) -> int | None:
        """Runs of this function and status that ended before this are deleted (None: none)."""
        window = self.own.get((app_id, function_id), self.server).of(status)
        return None if window is None else now - window

    def horizon(self, now: int) -> int | None:
        """The latest cutoff of any run: the scan stops there (None: nothing is deleted)."""
        windows = [w.shortest() for w in (self.server, *self.own.values())]
        shortest = min((w for w in windows if w is not None), default=None)
        return None if shortest is None else now - shortest


def plan(tx: Tx) -> Plan:
    """The server's stored windows, and each function's own (its unset kinds: the server's)."""
    server = stored_windows(tx)
    own = {}
    for row in tx.all("functions_with_retention"):
        mine = loads(row["definition"]).get("retention")  # as `Retention.to_json` stores it
        if not mine:
            continue
        own[(row["app_id"], row["id"])] = Windows(
            mine["completed_ms"] if mine["completed_ms"] is not None else server.completed_ms,
            mine["failed_ms"] if mine["failed_ms"] is not None else server.failed_ms)
    return Plan(server, own)


def uniform(window_ms: int) -> Plan:
    """Every finished run, whatever its function and status, past one window (`stepwise
    prune --older-than`)."""
    return Plan(Windows(window_ms, window_ms))


def claim_pass(tx: Tx, owner: str, now: int, until: int) -> bool:
    """Hold the deployment's one retention pass for `owner` until `until` (ms), if no other
    process holds it: True when `owner` holds it now."""
    return tx.one("claim_retention_pass", claim=f"{until:016d} {owner}", now_key=f"{now:016d}",
                  owner=owner) is not None


def release_pass(tx: Tx, owner: str) -> None:
    tx.exec("release_retention_pass", owner=owner)


#: Where a scan starts: before every row.
START: tuple[int, str] = (-1, "")


@dataclass
class RunsPage:
    """One page of the scan of finished runs: those to delete (`ids`, the latest of which
    ended at `ended_by`), and where the next page starts (None: done)."""

    ids: list[str]
    next: tuple[int, str] | None
    ended_by: int = 0


def runs_page(tx: Tx, plan: Plan, now: int, after: tuple[int, str], limit: int) -> RunsPage:
    """Read the next `limit` finished runs that ended before the plan's horizon and choose
    those past their window."""
    horizon = plan.horizon(now)
    if horizon is None:
        return RunsPage([], None)
    rows = tx.all("finished_runs_page", before=horizon, after_at=after[0], after_id=after[1],
                  limit=limit)
    chosen = []
    for row in rows:
        cutoff = plan.cutoff(row["app_id"], row["function_id"], row["status"], now)
        if row["status"] in TERMINAL_RUN and cutoff is not None and row["ended_at"] < cutoff:
            chosen.append(row)
    if chosen:
        held = {r["run_id"] for r in tx.all("idempotent_runs", ids=[r["id"] for r in chosen],
                                             now=now)}
        chosen = [r for r in chosen if r["id"] not in held]
    last = rows[-1] if len(rows) == limit else None
    return RunsPage([r["id"] for r in chosen],
                    None if last is None else (int(last["ended_at"]), str(last["id"])),
                    max((int(r["ended_at"]) for r in chosen), default=0))


@dataclass
class Deleted:
    """Rows one deletion removed."""

    runs: int = 0
    steps: int = 0
    events: int = 0

    def add(self, other: Deleted) -> None:
        self.runs += other.runs
        self.steps += other.steps
        self.events += other.events

    def to_json(self) -> dict[str, int]:
        return {"runs": self.runs, "steps": self.steps, "events": self.events}


def delete_runs(tx: Tx, ids: list[str], ended_by: int) -> Deleted:
    """Delete the runs `ids` that are still finished and ended by `ended_by`, with what is
    stored about them and the events that no run holds any more."""
    if not ids:
        return Deleted()
    gone = tx.all("prune_runs", ids=ids, ended_by=ended_by)
    if not gone:
        return Deleted()
    gone_ids = [r["id"] for r in gone]
    events = {r["event_id"] for r in gone if r["event_id"] is not None}
    events.update(r["event_id"] for r in tx.all("batch_event_ids", ids=gone_ids))
    steps = tx.exec("prune_steps", ids=gone_ids)
    tx.defer("prune_run_rows", ids=gone_ids)
    removed = tx.exec("prune_events", ids=sorted(events)) if events else 0
    return Deleted(len(gone_ids), steps, removed)


def events_page(tx: Tx, before: int, after: tuple[int, str], limit: int
                ) -> tuple[list[str], tuple[int, str] | None]:
    """The next `limit` events received before `before`, and where the page after starts."""
    rows = tx.all("events_page", before=before, after_at=after[0], after_id=after[1],
                  limit=limit)
    last = rows[-1] if len(rows) == limit else None
    return [r["id"] for r in rows], (None if last is None else
                                     (int(last["received_at"]), str(last["id"])))


def delete_events(tx: Tx, ids: list[str]) -> int:
    """Delete the events `ids` that no run holds."""
    return tx.exec("prune_events", ids=ids) if ids else 0


def expire_keys(tx: Tx, now: int, limit: int) -> int:
    """Delete up to `limit` idempotency keys whose window closed."""
    return tx.exec("expire_idempotency", now=now, limit=limit)


def expire_flow_state(tx: Tx, now: int, limit: int) -> int:
    """Delete up to `limit` rate-limit and throttle windows that stopped mattering (a window
    per key value, per user say, would otherwise stay forever). Windows stored before they
    had an expiry (migration 0021) get theirs first, a page at a time."""
    legacy = tx.all("flow_state_without_expiry", limit=limit)
    if legacy:
        periods = {f"{kind}:{r['app_id']}:{r['id']}:": _period_ms(loads(r["definition"]), kind)
                   for r in tx.all("flow_definitions") for kind in ("rate", "throttle")}
        for row in legacy:
            tx.exec("set_flow_state_expiry", key=row["key"],
                    expires_at=_legacy_expiry(row["key"], row["state"], periods, now))
    return tx.exec("expire_flow_state", now=now, limit=limit)


def _period_ms(definition: dict[str, Any], kind: str) -> int | None:
    flow = definition.get("flow") or {}
    option = flow.get("rate_limit" if kind == "rate" else "throttle")
    return int(option["period_ms"]) if isinstance(option, dict) else None


def _legacy_expiry(key: str, state: str, periods: dict[str, int | None], now: int) -> int:
    """When a window stored without an expiry stops mattering: a throttle's next start time,
    or a window's last start plus its function's period; now when its function is gone (or
    no longer limits) or the state cannot be read."""
    try:
        value = loads(state)
    except ValueError:
        return now
    if isinstance(value, dict) and isinstance(value.get("tat"), int | float):
        return int(value["tat"])
    period = next((p for prefix, p in periods.items() if key.startswith(prefix)), None)
    if not isinstance(value, list) or period is None:
        return now
    starts = [t for t in value if isinstance(t, int | float)]
    return int(max(starts)) + period if starts else now


def oldest_finished(tx: Tx) -> int | None:
    """When the oldest finished run kept ended (None: there is none)."""
    row = tx.one("oldest_finished")
    return None if row is None or row["at"] is None else int(row["at"])


def counts(tx: Tx, window_ms: int, now: int) -> dict[str, Any]:
    """What `uniform(window_ms)` would delete now: runs by status, steps, events."""
    found = {r["what"]: int(r["n"]) for r in tx.all("prunable_counts", before=now - window_ms,
                                                     now=now)}
    by_status = {k.split(":", 1)[1]: n for k, n in found.items() if k.startswith("run:")}
    return {"runs": sum(by_status.values()), "by_status": by_status,
            "steps": found.get("steps", 0), "events": found.get("events", 0)}


# --- erasure: everything stored about a subject ---------------------------------------------

#: The most matching events one erasure request deletes; the caller repeats while `more`.
ERASE_LIMIT = 500


class Unfinished(ValueError):
    """Erasure would delete runs that are not finished, and was not told to cancel them."""


def erase(tx: Tx, match: dict[str, str | None], now: int, dry_run: bool,
          cancel_unfinished: bool) -> dict[str, Any]:
    """Delete the events whose data matches `match` (`data_field` equals `data_value`, and
    `event_name` when given) and every run that holds one, with what those runs hold: the runs
    they invoked, their replays and re-runs, the runs their lifecycle events started, their
    steps, logs, failed attempts, idempotency keys, their events, and the rate-limit and
    throttle windows keyed by the events' data. Unfinished runs among them are cancelled
    first with `cancel_unfinished`; without it, nothing is deleted (`Unfinished`). At most
    ERASE_LIMIT matching events per call (`more`: call again)."""
    params: dict[str, Any] = {k: v for k, v in match.items() if v is not None}
    sql = ("SELECT e.id FROM events e WHERE " + tx.text("event_field_equals")
           + (" AND e.name = :event_name" if "event_name" in params else "")
           + " ORDER BY e.id LIMIT :limit")
    events = [r["id"] for r in tx.raw_all(sql, {**params, "limit": ERASE_LIMIT + 1})]
    more = len(events) > ERASE_LIMIT
    events = events[:ERASE_LIMIT]
    runs = _holding(tx, events)
    unfinished = [r["id"] for r in runs.values() if r["status"] not in TERMINAL_RUN]
    answer = {"events": len(events), "runs": len(runs), "unfinished": len(unfinished),
              "more": more}
    if dry_run:
        return answer
    if unfinished and not cancel_unfinished:
        raise Unfinished(f"{len(unfinished)} of the {len(runs)} runs holding this data are not "
                         "finished (e.g. run " + unfinished[0] + "): cancel them first, or "
                         "erase with cancel_unfinished")
    for run_id in unfinished:
        ingest.announce(tx, lifecycle.cancel(tx, run_id, now, reason="erasure"), now)
    if unfinished:  # their cancellation may have announced more lifecycle events
        runs = _holding(tx, events)
    keys: set[str] = set()
    flows: dict[tuple[str, str], Any] = {}
    for run in runs.values():
        scope = (run["app_id"], run["function_id"])
        if scope not in flows:
            definition = definitions.get(tx, *scope)
            flows[scope] = definition.flow if definition is not None else None
        if flows[scope] is not None and run["event_id"] is not None:
            keys.update(flow_control.keys_from_data(
                *scope, flows[scope], flow_control.event_for(tx, run["event_id"])))
    if keys:
        tx.exec("delete_flow_state", ids=sorted(keys))
    lifecycle_events = [r["id"] for run_id in runs for r in tx.all(
        "event_ids_between", lo=f"{run_id}:", hi=f"{run_id};")]
    deleted = delete_runs(tx, list(runs), now) if runs else Deleted()
    leftover = sorted(set(events) | set(lifecycle_events))
    deleted.events += delete_events(tx, leftover)
    return {**answer, "deleted": deleted.to_json()}


def _holding(tx: Tx, events: list[str]) -> dict[str, dict[str, Any]]:
    """The runs that hold the events `events`, and, until there are no more, the runs that
    those invoked, replay or re-run, or that their lifecycle events started."""
    found: dict[str, dict[str, Any]] = {}
    frontier = {r["id"]: r for r in tx.all("runs_holding_events", ids=events)} if events else {}
    while frontier:
        found.update(frontier)
        ids = list(frontier)
        started = [r["id"] for run_id in ids for r in tx.all(
            "event_ids_between", lo=f"{run_id}:", hi=f"{run_id};")]
        nxt = {r["id"]: r for r in tx.all("runs_descended", ids=ids)}
        if started:
            nxt.update({r["id"]: r for r in tx.all("runs_holding_events", ids=started)})
        frontier = {k: v for k, v in nxt.items() if k not in found}
    return found
