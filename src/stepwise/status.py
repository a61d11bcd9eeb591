"""The status words of runs and steps: one vocabulary for storage, engine, API, CLI and dashboard.

Members are named like their values, so a status binds to SQL the same way whether a driver
sends an enum's name or its value.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    sleeping = "sleeping"
    waiting = "waiting"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"  # rate-limited: recorded, never ran


#: A run in one of these never changes again (except by replay).
TERMINAL_RUN = frozenset({RunStatus.completed, RunStatus.failed, RunStatus.cancelled,
                          RunStatus.skipped})
UNFINISHED_RUN = frozenset(RunStatus) - TERMINAL_RUN
#: Parked until a timer or an event; an event or an invoked run's end wakes it early.
PARKED_RUN = frozenset({RunStatus.sleeping, RunStatus.waiting})
#: What replay accepts.
REPLAYABLE_RUN = frozenset({RunStatus.failed, RunStatus.cancelled, RunStatus.skipped})


class StepStatus(StrEnum):
    completed = "completed"
    failed = "failed"  # for good: raised as StepError where the step is awaited
    retrying = "retrying"  # a failed attempt; `ended_at` is when the next one is due
    sleeping = "sleeping"  # `ended_at` is the wake-up time
    waiting = "waiting"  # for an event; `ended_at` is the timeout
    invoking = "invoking"  # another run; `ended_at` is the timeout (NULL: none)


#: A step in one of these is never written again: its stored result is the result.
FINAL_STEP = frozenset({StepStatus.completed, StepStatus.failed})
#: Steps the run waits on; their `ended_at` says when they are due.
PENDING_STEP = frozenset(StepStatus) - FINAL_STEP
#: Pending steps the engine settles itself when their time comes (a retry is the code's).
TIMED_STEP = PENDING_STEP - {StepStatus.retrying}


def sql_list(statuses: frozenset[RunStatus] | frozenset[StepStatus]) -> str:
    """`'a', 'b'` for an SQL `IN (...)`, in a stable order."""
    return ", ".join(f"'{s.value}'" for s in sorted(statuses))
