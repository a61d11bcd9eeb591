"""The lifecycle events Inngest emits when a run of an SDK function ends, which SDK apps rely
on: `inngest/function.finished` for every end, and `inngest/function.failed` (what an SDK's
`onFailure` handler is triggered by) or `inngest/function.cancelled`. They are ingested in the
transaction that ends the run, so a handler can never miss one (`lifecycle.finish` answers
them, its caller ingests them). Python functions get none: their `on_failure` is stepwise's
own."""

from __future__ import annotations

from typing import Any

from ..errors import ErrorInfo
from ..events import StoredEvent, event_json
from ..payloads import dumps, loads
from ..status import RunStatus
from ..storage import Tx
from ..storage.rows import RunRow

FINISHED = "inngest/function.finished"
FAILED = "inngest/function.failed"
CANCELLED = "inngest/function.cancelled"
#: The event an invoked SDK function starts with.
INVOKED = "inngest/function.invoked"


def invoked_data(data: str, fn_id: str, source_fn_id: str, correlation_id: str) -> str:
    """An invoked SDK function's event data: the payload plus Inngest's `_inngest` block."""
    payload = loads(data)
    if not isinstance(payload, dict):
        payload = {}
    payload["_inngest"] = {"fn_id": fn_id, "source_fn_id": source_fn_id,
                           "correlation_id": correlation_id}
    return dumps(payload, INVOKED)


def end_events(tx: Tx, run: RunRow, status: RunStatus, output: str | None,
               error: ErrorInfo | None, now: int) -> list[StoredEvent]:
    """The end events of `run`, a run of an SDK function."""
    stored = tx.one("get_event", id=run["event_id"]) if run["event_id"] else None
    base: dict[str, Any] = {"function_id": run["function_id"], "run_id": run["id"],
                            "event": event_json(stored) if stored else None}
    sdk_error = _sdk_error(error) if status != RunStatus.completed else None
    ended = ({"result": None if output is None else loads(output)} if sdk_error is None
             else {"error": sdk_error})
    key = f"{run['id']}:{run['attempts']}"  # one set per end: a replayed run ends again
    meta = stored.get("meta") if stored else None  # the run's sessions go on, as Inngest's do
    events = [StoredEvent(f"{key}:finished", FINISHED, dumps(
        {**base, **ended, "_inngest": {"status": str(status)}}, FINISHED), now, meta=meta)]
    if status == RunStatus.failed:
        events.append(StoredEvent(f"{key}:failed", FAILED,
                                  dumps({**base, "error": sdk_error}, FAILED), now, meta=meta))
    elif status == RunStatus.cancelled:
        events.append(StoredEvent(f"{key}:cancelled", CANCELLED, dumps(base, CANCELLED), now,
                                  meta=meta))
    return events


def _sdk_error(error: ErrorInfo | None) -> dict[str, Any]:
    """An error as Inngest's lifecycle events carry it: `error` sums the failure up as its
    executor does (an error the app answered, which has a stack: "NonRetriableError" or
    "invalid status code: 500"; one of stepwise's own: its name and message), then the
    error's name, message, stack and cause (the SDK rebuilds `error.cause` from it)."""
    error = error or {"name": "Error", "message": "the run ended without a result"}
    name, message = error.get("name", "Error"), error.get("message", "")
    summary = f"{name}: {message}"
    if "stack" in error:
        summary = "NonRetriableError" if name == "NonRetriableError" else \
            "invalid status code: 500"
    out: dict[str, Any] = {"error": summary, "name": name, "message": message}
    if error.get("stack"):
        out["stack"] = error["stack"]
    if error.get("cause") is not None:
        out["cause"] = error["cause"]
    return out
