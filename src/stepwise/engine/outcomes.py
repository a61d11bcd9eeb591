"""Outcomes: the only language an executor speaks to the engine.

An executor runs a function's code (in this process, or later over HTTP) and reports what
happened as these values; the engine (`runs.apply`) decides everything that follows: retries
and backoff, parking, wait and invoke expiry, on_failure, fencing. Several outcomes reported
together (parallel branches that settled) are applied in one transaction.

Times are milliseconds since the epoch; outputs and data are checked JSON text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ErrorInfo
from ..events import StoredEvent


@dataclass(frozen=True, slots=True)
class Lease:
    """One take of a run: the credential an executor writes with. `epoch` grows with each take
    of the run (`runs.lease_epoch`), so an execution from an earlier take, of any worker this
    one included, is refused by every write (`lease_held` in `queries.sql`)."""

    run_id: str
    owner: str  # the worker that took it
    epoch: int

    def params(self) -> dict[str, str | int]:
        """The fence's parameters, as every fenced statement takes them."""
        return {"run_id": self.run_id, "owner": self.owner, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class StepCompleted:
    step_id: str
    seq: int  # the step's position in the code's order, for the non-determinism check
    output: str
    started_at: int
    ended_at: int
    attempt: int = 0  # the attempt that succeeded; 0 is the first
    name: str | None = None  # the code's name for a step whose id is a hash (SDK steps)


@dataclass(frozen=True, slots=True)
class StepFailed:
    """An attempt failed. The engine decides whether it is retried (the run parks until then)
    or failed for good (StepError where the step is awaited)."""

    step_id: str
    seq: int
    error: ErrorInfo
    started_at: int
    ended_at: int
    attempt: int = 0
    retriable: bool = True
    retry_after_ms: int | None = None  # instead of the policy's backoff
    retries: int | None = None  # this step's own retry count, instead of the function's
    name: str | None = None  # the code's name for a step whose id is a hash (SDK steps)


@dataclass(frozen=True, slots=True)
class SleepUntil:
    step_id: str
    seq: int
    until: int
    started_at: int
    name: str | None = None  # the code's name for a step whose id is a hash (SDK steps)


@dataclass(frozen=True, slots=True)
class WaitForEvent:
    """Wait for the first `event` after now that matches: `match` is a field path equal in the
    run's event and the awaited one, `if_` a CEL condition over `event` and `async`."""

    step_id: str
    seq: int
    event: str
    expires_at: int
    started_at: int
    match: str | None = None
    if_: str | None = None
    name: str | None = None  # the code's name for a step whose id is a hash (SDK steps)


@dataclass(frozen=True, slots=True)
class WaitForSignal:
    """Wait for `signal` (`POST /v1/signals`) until `expires_at`; a signal already waited for
    by another run fails the step, unless `replace` (that run's wait is then taken over and it
    times out). Its value is `{"signal", "data"}`, or None at the timeout (Inngest's)."""

    step_id: str
    seq: int
    signal: str
    expires_at: int
    started_at: int
    replace: bool = False
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Invoke:
    """Start `function_id` (of the same app, or another app's: `engine.definitions.find`) with
    `data` as its event data; its output (or its failure) becomes this step's."""

    step_id: str
    seq: int
    function_id: str
    data: str
    started_at: int
    expires_at: int | None = None
    trace: str | None = None  # traceparent of the invoking run, for the invoked run's spans
    name: str | None = None  # the code's name for a step whose id is a hash (SDK steps)
    meta: str | None = None  # the invoked event's `meta` (an SDK's sessions), as JSON


@dataclass(frozen=True, slots=True)
class EventsSent:
    """A step that sends events: they are stored with the step, so a retry never sends twice."""

    step_id: str
    seq: int
    events: tuple[StoredEvent, ...]
    at: int


@dataclass(frozen=True, slots=True)
class RunCompleted:
    output: str


@dataclass(frozen=True, slots=True)
class RunFailed:
    """The function body failed. Retriable: the body is retried under the function's policy."""

    error: ErrorInfo
    retriable: bool = True
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    at: int
    level: str  # DEBUG, INFO, WARNING, ERROR, CRITICAL
    step_id: str | None  # the step whose code logged it; None for the function body
    message: str


@dataclass(frozen=True, slots=True)
class Logged:
    """Lines the code logged with `ctx.logger` (each once: replays are quiet). The engine keeps
    at most MAX_LOG_LINES per run."""

    lines: tuple[LogLine, ...]


Outcome = (StepCompleted | StepFailed | SleepUntil | WaitForEvent | WaitForSignal | Invoke
           | EventsSent | RunCompleted | RunFailed | Logged)


class Applied:
    """What the engine answered: what the executor's code sees next."""

    __slots__ = ("failed", "outputs", "retry_at", "run_status")

    def __init__(self) -> None:
        #: Stored output of each completed step (what was stored first, if it already was).
        self.outputs: dict[str, str | None] = {}
        #: Steps failed for good, with their error.
        self.failed: dict[str, ErrorInfo] = {}
        #: Steps to retry, and when.
        self.retry_at: dict[str, int] = {}
        #: The run's status when this batch finished it or parked it (None: still executing).
        self.run_status: str | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Applied) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        return "Applied(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"
