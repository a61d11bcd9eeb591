"""Storage rows as the API shows them: each typed row (`stepwise.storage.rows`) or engine
summary becomes its model in `models`, field by field.

Times are stored as milliseconds and shown as ISO 8601 (UTC, milliseconds); JSON values are
stored as text and shown parsed. In lists, long outputs, errors and event data are left out
(`preview`) and flagged `*_truncated`; an error left out still shows its first line
(`error_title`), read from the start of its JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..payloads import MAX_DEPTH, PayloadError, encoded_too_deep, loads, storable_text
from ..status import RunStatus, StepStatus
from ..storage import rows
from .models import (
    ERROR_TITLE_CHARS,
    AppOut,
    EventDetail,
    EventOut,
    FailureOut,
    FunctionStats,
    FunctionStatsOut,
    LogOut,
    RunDetail,
    RunOut,
    StepOut,
    UnservedOut,
    WorkerOut,
)

RunT = TypeVar("RunT", bound=RunOut)
EventT = TypeVar("EventT", bound=EventOut)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def stored(text: str | None) -> Any:
    """A stored JSON value for an answer (values stored before the depth limit existed and
    nested deeper are shown as a note, so they cannot break a page)."""
    if text is None:
        return None
    try:
        value = loads(text)
    except PayloadError as exc:
        return f"<unreadable stored value: {exc}>"
    if encoded_too_deep(text, value):
        return f"<stored value nested deeper than {MAX_DEPTH} levels>"
    return value


def _preview(text: str | None, preview: int | None) -> tuple[Any, bool]:
    """A stored value and whether it is left out for being longer than `preview`."""
    cut = preview is not None and text is not None and len(text) > preview
    return (None if cut else stored(text)), cut


_DECODER = json.JSONDecoder()


def error_title(text: str | None) -> str | None:
    """The first line of a stored error, `name: message` (at most ERROR_TITLE_CHARS), from
    its JSON text or only the start of it: a list reads a prefix of each error, and an error
    over the preview would otherwise show nothing there. Errors are stored name, message,
    stack, so the prefix holds what the title needs."""
    if not text:
        return None
    start = _skip(text, 0)
    if text.startswith('"', start):  # an error stored as a bare string
        parts = [_string_from(text, start)[0]]
    else:
        fields = _top_strings(text, start, ("name", "message"))
        parts = [fields[k] for k in ("name", "message") if k in fields]
    lines = [line for part in parts for line in part.strip().splitlines()[:1]]
    title = ": ".join(line.strip() for line in lines if line.strip())
    if not title:
        return None
    if len(title) > ERROR_TITLE_CHARS:
        title = title[:ERROR_TITLE_CHARS - 1].rstrip() + "…"
    return storable_text(title)


def _top_strings(text: str, pos: int, wanted: tuple[str, ...]) -> dict[str, str]:
    """The string values of `wanted` keys of the JSON object starting at `pos`, reading
    only its top level and stopping where the text is cut (nested errors, such as an SDK's
    `cause`, have names and messages of their own)."""
    found: dict[str, str] = {}
    if not text.startswith("{", pos):
        return found
    pos += 1
    while len(found) < len(wanted):
        pos = _skip(text, pos)
        if not text.startswith('"', pos):
            break
        key, pos, whole = _string_from(text, pos)
        pos = _skip(text, pos)
        if not whole or not text.startswith(":", pos):
            break
        pos = _skip(text, pos + 1)
        if key in wanted and text.startswith('"', pos):
            found[key], pos, whole = _string_from(text, pos)
            if not whole:
                break
        else:
            try:
                _, pos = _DECODER.raw_decode(text, pos)
            except (ValueError, RecursionError):
                break
        pos = _skip(text, pos)
        if not text.startswith(",", pos):
            break
        pos += 1
    return found


def _skip(text: str, pos: int) -> int:
    """Past JSON whitespace from `pos`."""
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _string_from(text: str, quote: int) -> tuple[str, int, bool]:
    """The JSON string opened at `quote`, where it ends, and whether it is whole; a string
    cut short reads as far as it goes (less an escape torn in two)."""
    try:
        value, end = _DECODER.raw_decode(text, quote)
        return str(value), end, True
    except ValueError:
        pass
    fragment = text[quote:]
    for cut in range(len(fragment), max(0, len(fragment) - 12), -1):
        try:
            value = str(_DECODER.raw_decode(fragment[:cut] + '"')[0])
        except ValueError:
            continue
        if value and "\ud800" <= value[-1] <= "\udbff":  # half of a pair
            value = value[:-1]
        return value, len(text), False
    return "", len(text), False


def _run(model: type[RunT], row: rows.RunRow, preview: int | None, failed: int | None,
         **detail: Any) -> RunT:
    output, output_cut = _preview(row["output"], preview)
    error, error_cut = _preview(row["error"], preview)
    owner = row.get("lease_owner") if row["status"] == RunStatus.running else None
    return model(
        id=row["id"], app_id=row["app_id"], function_id=row["function_id"],
        event_id=row["event_id"], status=RunStatus(row["status"]), output=output, error=error,
        attempts=row["attempts"], created_at=iso(row["created_at"]),
        started_at=iso(row["started_at"]), ended_at=iso(row["ended_at"]),
        url=f"/api/v1/runs/{row['id']}", failed_attempts=failed,
        parent_run_id=row["parent_run_id"], origin_run_id=row["origin_run_id"],
        rerun_of=row.get("rerun_of"), worker=owner or None, output_truncated=output_cut,
        error_truncated=error_cut, error_title=error_title(row["error"]), **detail)


def run_out(row: rows.RunRow, preview: int | None = None) -> RunOut:
    """A run of a list (with `preview`, a longer output or error is left out), or one linked
    from another run or an event. List rows also count the run's failed attempts."""
    columns: Mapping[str, Any] = row
    failed = int(columns["failed_attempts"]) if "failed_attempts" in columns else None
    return _run(RunOut, row, preview, failed,
                waiting_to_retry=row["status"] == RunStatus.queued and row["retry"] > 0)


def run_detail(row: rows.RunDetail) -> RunDetail:
    """One run whole: its steps, failed attempts, event, logs and the runs it started."""
    event = row["event"]
    return _run(RunDetail, row, None, len(row["failures"]),
                steps=[step_out(s) for s in row["steps"]],
                failures=[failure_out(f) for f in row["failures"]],
                event=None if event is None else event_out(event),
                children=[run_out(c) for c in row["children"]],
                logs=[log_out(line) for line in row["logs"]],
                waiting_to_retry=waiting_to_retry(row))


def waiting_to_retry(row: rows.RunDetail) -> bool:
    """Queued for a retry: the run's retry count (failed attempts in a row, set by a step's or
    the body's failure that is retried, reset when a step completes and by a replay) is not
    zero, or a step is retrying (a parallel step may have completed since, resetting it; a
    list, without the steps, reads the count alone)."""
    return row["status"] == RunStatus.queued and (
        row["retry"] > 0 or any(s["status"] == StepStatus.retrying for s in row["steps"]))


def step_out(row: rows.StepRow) -> StepOut:
    return StepOut(id=row["id"], name=row.get("name") or row["id"],
                   status=StepStatus(row["status"]), attempts=row["attempts"],
                   output=stored(row["output"]), error=stored(row["error"]),
                   started_at=iso(row["started_at"]), ended_at=iso(row["ended_at"]),
                   kind=row.get("kind"), attempt_started_at=iso(
                       row["started_at"] if row["attempts"] <= 1
                       else row.get("attempt_started_at")))


def failure_out(row: rows.FailureRow) -> FailureOut:
    return FailureOut(step_id=row["step_id"], attempt=row["attempt"], error=stored(row["error"]),
                      started_at=iso(row["started_at"]), ended_at=iso(row["ended_at"]))


def log_out(row: rows.LogRow) -> LogOut:
    return LogOut(at=iso(row["at"]), level=row["level"], step_id=row["step_id"],
                  message=row["message"])


def _event(model: type[EventT], row: rows.EventRow, preview: int | None,
           **detail: Any) -> EventT:
    cut = preview is not None and len(row["data"]) > preview
    return model(id=row["id"], name=row["name"], data=None if cut else stored(row["data"]),
                 ts=row["ts"], received_at=iso(row.get("received_at")),
                 url=f"/api/v1/events/{row['id']}", data_truncated=cut, **detail)


def event_out(row: rows.EventRow, preview: int | None = None) -> EventOut:
    """An event; with `preview`, longer data is left out."""
    return _event(EventOut, row, preview)


def event_detail(row: rows.EventRow, runs: list[rows.RunRow]) -> EventDetail:
    return _event(EventDetail, row, None, runs=[run_out(r) for r in runs])


def app_out(row: Mapping[str, Any]) -> AppOut:
    """An app as `Engine.list_apps` answers it (its row, with its functions' ids)."""
    return AppOut(id=row["id"], sdk=row["sdk"], url=row["url"], framework=row.get("framework"),
                  synced_at=iso(row["synced_at"]), changed_at=iso(row["changed_at"]),
                  functions=row["functions"], warnings=row["warnings"])


def worker_out(row: Mapping[str, Any]) -> WorkerOut:
    """A worker as `Engine.workers` answers it (its row, with `live`)."""
    return WorkerOut(id=row["id"], app_id=row["app_id"], host=row["host"], pid=row["pid"],
                     functions=row["functions"], slots=row["slots"], in_use=row["in_use"],
                     started_at=iso(row["started_at"]), heartbeat_at=iso(row["heartbeat_at"]),
                     live=row["live"])


def unserved_out(row: Mapping[str, Any]) -> UnservedOut:
    return UnservedOut(app_id=row["app_id"], function_id=row["function_id"],
                       queued=row["queued"], oldest_at=iso(row["oldest_at"]))


def function_stats(stats: Mapping[str, Any]) -> FunctionStats:
    """`Engine.function_stats` with its start as a time."""
    functions = {name: FunctionStatsOut(completed=f["completed"], failed=f["failed"],
                                        p50_ms=f["p50_ms"], p95_ms=f["p95_ms"])
                 for name, f in stats["functions"].items()}
    return FunctionStats(since=iso(stats["since"]), bucket_ms=stats["bucket_ms"],
                         buckets=stats["buckets"], truncated=stats["truncated"],
                         functions=functions)
