"""Waits: runs parked until an event (wait_for_event) and cancel_on watches, and delivering
an arriving event to them.

A wait with `match` is stored with the canonical JSON of the matched field, so delivery finds
it by index; a wait with only `if_` is evaluated for each event of its name.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import expressions
from ..events import StoredEvent, event_json
from ..flow import CancelOn
from ..payloads import dumps, loads
from ..status import StepStatus
from ..storage import Tx
from . import lifecycle

log = logging.getLogger("stepwise.engine")
STEP = "step"  # a wait_for_event step
CANCEL = "cancel"  # a cancel_on watch


def match_of(event: dict[str, Any], path: str) -> tuple[str, str] | None:
    """The field at `path` in `event`, as (normalized path, canonical JSON of its value), which
    is how waits are stored and found; None when the event has no such field."""
    parts = expressions.field_path(path)
    value = expressions.lookup(event, parts)
    if value is expressions.MISSING:
        return None
    return ".".join(parts), dumps(value, "match value")


def add_step_wait(tx: Tx, run_id: str, step_id: str, name: str, key: tuple[str, str] | None,
                  if_expr: str | None, trigger_event: dict[str, Any] | None, expires_at: int,
                  now: int) -> None:
    tx.exec("insert_wait", run_id=run_id, step_id=step_id, event_name=name,
            match_path=key[0] if key else None, match_key=key[1] if key else None,
            if_expr=if_expr, trigger_event=dumps(trigger_event, "event"), expires_at=expires_at,
            now=now)


def add_signal_wait(tx: Tx, run_id: str, step_id: str, signal: str, expires_at: int,
                    replace: bool, now: int) -> bool:
    """The step waits for `signal`; False when another run's live wait holds it (and not
    `replace`)."""
    return tx.one("claim_signal", signal=signal, run_id=run_id, step_id=step_id,
                  expires_at=expires_at, replace=int(replace), now=now) is not None


def deliver_signal(tx: Tx, signal: str, data: str, now: int) -> str | None:
    """Give `data` (JSON) to the run waiting for `signal`: its step's value becomes
    `{"signal", "data"}`. Answers the run's id; None when no run waits for it now."""
    taken = tx.one("take_signal", signal=signal, now=now)
    if taken is None:
        return None
    output = '{"signal":' + dumps(signal, "signal") + ',"data":' + data + "}"
    if not lifecycle.settle_step(tx, taken["run_id"], taken["step_id"], StepStatus.waiting,
                                 StepStatus.completed, output, None, now):
        return None  # its timeout settled it first
    return str(taken["run_id"])


def add_cancel_wait(tx: Tx, run_id: str, index: int, cancel: CancelOn, event: dict[str, Any],
                    now: int) -> None:
    key = None
    if cancel.match:
        key = match_of(event, cancel.match)
        if key is None:
            return  # nothing to match on: this cancel_on can never fire for this run
    tx.exec("insert_cancel_wait", run_id=run_id, step_id=f"$cancel:{index}",
            event_name=cancel.event, match_path=key[0] if key else None,
            match_key=key[1] if key else None, if_expr=cancel.if_,
            trigger_event=dumps(event, "event"), now=now,
            expires_at=lifecycle.FOREVER if cancel.timeout_ms is None else now + cancel.timeout_ms)


__all__ = ["event_json"]  # functions and expressions see events as `event_json` makes them


def deliver(tx: Tx, ev: StoredEvent, now: int) -> list[StoredEvent]:
    """Give the event to every run waiting for it whose match holds, once each; answers the
    events that the runs it cancelled announce (`lifecycle.Ended`), for the caller to ingest."""
    announced: list[StoredEvent] = []
    paths = tx.all("wait_paths", name=ev.name)
    if not paths:
        return announced
    incoming = {"name": ev.name, "data": loads(ev.data), "id": ev.id, "ts": ev.ts}
    for row in paths:
        path = row["match_path"]
        if path is None:
            candidates = tx.all("waits_without_match", name=ev.name, now=now)
        else:
            found = match_of(incoming, path)
            if found is None:
                continue
            candidates = tx.all("waits_by_key", name=ev.name, path=path, key=found[1],
                                now=now)
        for wait in candidates:
            if wait["if_expr"] and not _holds(wait, incoming):
                continue
            if tx.exec("delete_wait", run_id=wait["run_id"], step_id=wait["step_id"]) == 0:
                continue
            if wait["kind"] == CANCEL:
                ended = lifecycle.cancel(tx, wait["run_id"], now)
                announced.extend(ended.events if ended else ())
            else:
                lifecycle.settle_step(tx, wait["run_id"], wait["step_id"], StepStatus.waiting,
                                      StepStatus.completed, dumps(incoming, "event"), None, now)
    return announced


def _holds(wait: dict[str, Any], incoming: dict[str, Any]) -> bool:
    try:
        ok = expressions.evaluate(wait["if_expr"], {"event": loads(wait["trigger_event"]),
                                                    "async": incoming})
    except expressions.ExpressionError as exc:
        log.warning("run %s: %s; the event does not match", wait["run_id"], exc)
        return False
    return ok is True
