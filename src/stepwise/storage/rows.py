"""Typed rows: what the named queries return, so callers read fields, not guesses.

JSON columns (`output`, `error`, `data`, `definition`) hold text; statuses hold the words of
`stepwise.status`. Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class RunRow(TypedDict):
    id: str
    app_id: str
    function_id: str
    event_id: str | None
    status: str
    output: str | None
    error: str | None
    attempts: int
    retry: int
    origin_run_id: str | None
    parent_run_id: str | None
    parent_step_id: str | None
    rerun_of: str | None
    created_at: int
    started_at: int | None
    ended_at: int | None
    lease_owner: NotRequired[str | None]  # read for one run only


class StepRow(TypedDict):
    id: str
    seq: int
    status: str
    attempts: int
    output: str | None
    error: str | None
    started_at: int | None
    ended_at: int | None
    name: NotRequired[str | None]
    #: 'run', 'sleep', 'wait', 'invoke'; None: stored before kinds were (migration 0016).
    kind: NotRequired[str | None]
    #: When the attempt whose result the row holds started, if not the first (migration 0022).
    attempt_started_at: NotRequired[int | None]


class EventRow(TypedDict):
    id: str
    name: str
    data: str
    ts: int
    received_at: NotRequired[int]
    trace: NotRequired[str | None]
    meta: NotRequired[str | None]


class FailureRow(TypedDict):
    step_id: str | None
    attempt: int
    error: str
    started_at: int | None
    ended_at: int


class LogRow(TypedDict):
    seq: int
    at: int
    level: str
    step_id: str | None
    message: str


class RunDetail(RunRow):
    steps: list[StepRow]
    failures: list[FailureRow]
    event: EventRow | None
    children: list[RunRow]
    logs: list[LogRow]
