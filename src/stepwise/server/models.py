"""The API's JSON shapes: what each route answers and the request bodies it reads.

These models are the public contract (documented at /openapi.json, read by the dashboard and
by clients outside this repository): a field's name, order, type or default changes the
bytes every client sees. `convert` builds them from storage rows.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

from ..durations import PATTERN as DURATION_PATTERN
from ..durations import WINDOW_PATTERN
from ..engine.search import COUNT_LIMIT, Q_PATTERN
from ..status import RunStatus, StepStatus

#: In run lists, an output or error longer than this many characters of JSON is left out
#: (`output_truncated`/`error_truncated`); the run's own URL has it whole. This bounds a page
#: of 1,000 runs to a few MiB, whatever the runs returned.
LIST_PREVIEW_CHARS = 1024
#: The longest `error_title`: one line of a list, whatever the message.
ERROR_TITLE_CHARS = 200
#: Text in a URL: no NUL (the gate refuses it before any route; documented here).
NO_NUL = r"^[^\x00]*$"
#: `event_data=path=value`: a dotted path of names, then the value.
DATA_MATCH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=[^\x00]*$"

#: A run id in a route's path.
RunId = Annotated[str, Path(pattern=NO_NUL, description="A run id")]


class JSONText(JSONResponse):
    """A JSON answer encoded directly (no model re-validation: the shapes are built here and
    documented by the routes' response models)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()


class StepOut(BaseModel):
    id: str
    name: str = Field(description="The step's name in the code: its id, except for SDK steps, "
                                  "whose id is a hash of the name")
    status: StepStatus
    attempts: int
    output: Any = None
    error: Any = None
    started_at: str | None = Field(
        None, description="When its first attempt started (a retried step keeps it; each "
                          "failed attempt's own times are in the run's `failures`)")
    ended_at: str | None = Field(
        None, description="When it ended; while pending, when it is due (`retrying`: the "
                          "next attempt; `sleeping`: the wake-up; `waiting`, `invoking`: the "
                          "timeout)")
    kind: str | None = Field(None, description="run (code), sleep, wait or invoke; null for "
                                               "steps stored before kinds were (0016)")
    attempt_started_at: str | None = Field(
        None, description="When the attempt whose result the step holds (its last) started: "
                          "`started_at` for a step attempted once; null where not stored "
                          "(steps retried before migration 0022)")


class RunOut(BaseModel):
    id: str
    app_id: str
    function_id: str
    event_id: str | None
    status: RunStatus
    output: Any = None
    error: Any = None
    attempts: int
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    url: str = Field(description="This run's own address in the API")
    failed_attempts: int | None = Field(
        default=None, description="Failed attempts of its steps and body (each retried one, and "
                                  "the last); not given for linked runs")
    parent_run_id: str | None = Field(default=None,
                                      description="The run that invoked this one")
    origin_run_id: str | None = Field(
        default=None, description="The failed run this on_failure run handles, or the run "
                                  "this one replays")
    rerun_of: str | None = Field(default=None,
                                 description="The finished run this one re-runs (same event)")
    worker: str | None = Field(default=None, description=(
        "The worker executing it now (host:pid:id), for a running run; in one run's detail"))
    output_truncated: bool = Field(
        default=False, description=f"In lists: the output is over {LIST_PREVIEW_CHARS} "
                                   "characters and left out; GET the run's url for it")
    error_truncated: bool = Field(default=False, description="As output_truncated, for error")
    error_title: str | None = Field(
        default=None, description=f"The error's first line, `name: message` (at most "
                                  f"{ERROR_TITLE_CHARS} characters); in lists too, where an "
                                  "error left out (error_truncated) still shows it")
    waiting_to_retry: bool = Field(
        default=False, description="Queued to retry a failed attempt, not yet due or not yet "
                                   "taken: of a step (that step is `retrying`; its `ended_at` "
                                   "is when) or of the function body. False for a run queued "
                                   "for its first attempt or by a replay")


class FailureOut(BaseModel):
    step_id: str | None = Field(description="The step that failed; null for the function body")
    attempt: int
    error: Any
    started_at: str | None = None
    ended_at: str | None = None


class EventOut(BaseModel):
    id: str
    name: str
    data: Any = Field(description="The event's data (left out of lists when over 1 KiB)")
    ts: int = Field(description="Milliseconds since the epoch")
    received_at: str | None = None
    url: str
    data_truncated: bool = False


class LogOut(BaseModel):
    at: str | None
    level: str
    step_id: str | None = Field(description="The step whose code logged it; null: the body")
    message: str


class RunDetail(RunOut):
    steps: list[StepOut]
    failures: list[FailureOut] = Field(
        default_factory=list, description="Every failed attempt, oldest first")
    event: EventOut | None = Field(default=None, description="The event that started the run")
    logs: list[LogOut] = Field(
        default_factory=list, description="ctx.logger lines, oldest first (at most 1,000 per "
                                          "run; each line at most 4,000 characters)")
    children: list[RunOut] = Field(
        default_factory=list, description="Runs this one started: invoked runs and its "
                                          "on_failure handler (outputs left out)")


class Page(BaseModel):
    next: str | None = Field(
        default=None, description="Pass as `before` for the next (older) page; null at the end")


class EventList(Page):
    events: list[EventOut]


class EventDetail(EventOut):
    runs: list[RunOut] = Field(description="The runs the event started (outputs left out)")


class RunList(Page):
    runs: list[RunOut]
    total: int | None = Field(
        default=None, description="How many runs match in all (every page, not only this "
                                  f"one), counted up to {COUNT_LIMIT:,}: with `total_exact` "
                                  "false, more than `total` match")
    total_exact: bool = Field(default=True, description="False when more than `total` runs "
                                                        "match (the count stopped there)")


class ErrorOut(BaseModel):
    error: str = Field(description="What is wrong, in one line")


class EventIds(BaseModel):
    ids: list[str]


class BulkCancel(BaseModel):
    """Which runs to cancel: created in [started_after, started_before), all when omitted."""

    model_config = ConfigDict(extra="forbid")

    started_after: AwareDatetime | None = None
    started_before: AwareDatetime | None = None
    app_id: str | None = None


class CancelledCount(BaseModel):
    cancelled: int


class RunFilter(BaseModel):
    """Which runs a bulk operation touches: the filters of `GET /api/v1/runs`. Without
    `status`, every run the operation applies to (replay: failed, cancelled, skipped;
    cancel: queued, running, sleeping, waiting)."""

    model_config = ConfigDict(extra="forbid")

    function: str | None = Field(None, max_length=256, pattern=NO_NUL)
    app: str | None = Field(None, max_length=256, pattern=NO_NUL)
    status: RunStatus | None = None
    event_name: str | None = Field(None, max_length=256, pattern=NO_NUL)
    event_data: str | None = Field(None, max_length=1024, pattern=DATA_MATCH)
    q: str | None = Field(None, max_length=1024, pattern=Q_PATTERN,
                          description="A search, as `GET /api/v1/runs` takes it")
    since: str | None = Field(None, max_length=64, description="Created at or after (ISO 8601)",
                              json_schema_extra={"format": "date-time"})
    until: str | None = Field(None, max_length=64, description="Created before (ISO 8601)",
                              json_schema_extra={"format": "date-time"})
    #: Strict: `0` or `"yes"` is refused (400), not read as a boolean.
    dry_run: StrictBool = Field(False, description="Only count the runs it would touch")


class BulkResult(BaseModel):
    matched: int = Field(description="Runs matching the filter that the operation applies to")
    changed: int = Field(description="Runs replayed or cancelled by this request (0 on a "
                                     "dry run)")
    more: bool = Field(description="More matched than one request changes (1,000): send it "
                                   "again")


class WorkerOut(BaseModel):
    id: str
    app_id: str
    host: str
    pid: int
    functions: list[str]
    slots: int = Field(description="How many runs it executes at once")
    in_use: int = Field(description="Slots busy at its last heartbeat")
    started_at: str | None
    heartbeat_at: str | None
    live: bool = Field(description="False: no heartbeat for one lease period (gone)")


class UnservedOut(BaseModel):
    app_id: str
    function_id: str
    queued: int = Field(description="Runs due now that no live worker serves")
    oldest_at: str | None


class AppOut(BaseModel):
    id: str
    sdk: str = Field(description="The SDK and version that synced it (`stepwise-python` for a "
                                 "Python app registered by its workers)")
    url: str | None = Field(description="Where its functions are called (SDK apps)")
    framework: str | None = None
    synced_at: str | None = Field(description="Its last sync (or Python worker start)")
    changed_at: str | None = Field(description="When its functions last changed")
    functions: list[str]
    warnings: list[str] = Field(description="What its last sync said that this server "
                                            "ignored (fields it does not know)")


class AppList(BaseModel):
    apps: list[AppOut]


class WorkerList(BaseModel):
    workers: list[WorkerOut]
    unserved: list[UnservedOut] = Field(
        description="Functions with due runs that no live worker serves: they wait until a "
                    "worker serving them starts")


class FunctionStatsOut(BaseModel):
    completed: list[int]
    failed: list[int]
    p50_ms: list[int | None] = Field(description="Median run duration (creation to end)")
    p95_ms: list[int | None]


class FunctionStats(BaseModel):
    since: str | None
    bucket_ms: int
    buckets: int
    truncated: bool = Field(description="Only the newest 100,000 finished runs were counted")
    functions: dict[str, FunctionStatsOut]


class RetentionIn(BaseModel):
    """The server's retention: how long finished runs are kept after they ended (`30d`,
    `12h`, ... or `forever`); an omitted kind keeps its setting."""

    model_config = ConfigDict(extra="forbid")

    completed: str | None = Field(None, pattern=WINDOW_PATTERN, description="Completed, "
                                  "cancelled and skipped runs, e.g. 30d")
    failed: str | None = Field(None, pattern=WINDOW_PATTERN, description="Failed runs, e.g. 90d")


class FunctionRetention(BaseModel):
    app_id: str
    function_id: str
    completed: str
    failed: str


class RetentionOut(BaseModel):
    completed: str = Field(description="Completed, cancelled and skipped runs are kept this "
                                       "long after they ended (or `forever`)")
    failed: str = Field(description="Failed runs are kept this long (or `forever`)")
    functions: list[FunctionRetention] = Field(
        description="Functions with a retention of their own (`@app.function(retention=)`)")


class PruneIn(BaseModel):
    """Delete finished runs that ended longer ago than `older_than`, whatever their function's
    retention, with their steps and the events nothing else holds."""

    model_config = ConfigDict(extra="forbid")

    older_than: str = Field(pattern=DURATION_PATTERN,
                            description="A duration: 30d, 12h, 90m, 1s")
    dry_run: StrictBool = Field(False, description="Only count what it would delete")
    max_runs: int = Field(10_000, ge=1, le=1_000_000,
                          description="Stop after deleting about this many runs (`more`)")


class PruneOut(BaseModel):
    dry_run: bool
    runs: int
    steps: int
    events: int
    by_status: dict[str, int] | None = Field(None, description="Runs by status (dry run)")
    idempotency_keys: int = Field(0, description="Idempotency keys past their window, deleted")
    more: bool = Field(False, description="Stopped at max_runs: send it again")


class EraseIn(BaseModel):
    """Whose data to erase: the events whose data has `value` at the dotted `event_data`
    path (`user.id=42`), optionally of one event name."""

    model_config = ConfigDict(extra="forbid")

    event_data: str = Field(max_length=1024, pattern=DATA_MATCH)
    event_name: str | None = Field(None, max_length=256, pattern=NO_NUL)
    dry_run: StrictBool = Field(False, description="Only count what it would delete")
    cancel_unfinished: StrictBool = Field(
        False, description="Cancel the unfinished runs holding the data, then delete them; "
                           "without it, such runs make the request fail (409)")


class EraseOut(BaseModel):
    dry_run: bool
    events: int = Field(description="Events matching the filter (in this request)")
    runs: int = Field(description="Runs holding them, with the runs those invoked, replay or "
                                  "re-run")
    unfinished: int = Field(description="Of those, runs not finished")
    deleted: dict[str, int] | None = Field(None, description="Rows deleted: runs, steps, events")
    more: bool = Field(description="More events match than one request erases (500): send "
                                   "it again")


class AuditEntry(BaseModel):
    id: str
    at: str | None
    actor: str = Field(description="Who: 'API key', 'operator key', a single sign-on email, "
                                   "or a name given at sign-in with the role's key")
    role: str = Field(description="viewer, operator or admin")
    action: str = Field(description="The method and route, e.g. 'POST "
                                    "/api/v1/runs/{run_id}/replay', or 'sign-in'")
    target: str = Field(description="The route's path parameters (a run id, say)")
    status: int = Field(description="The HTTP status the action was answered with")
    detail: Any = Field(description="The query and JSON body of the request (bounded)")


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next: str | None = Field(None, description="Pass as `before` for the next (older) page")


class Me(BaseModel):
    actor: str
    role: str
    via: str = Field(description="key, session, signing key, or open (no keys configured)")
    signed_in: bool = Field(description="Whether a sign-in session (a cookie) identifies you")
