"""Checkpointing, as inngest-js 4.x does it: a call that carries `ctx.fn_id` and `ctx.qi_id`
lets the SDK run step after step within that one call, posting each step's result to
`POST /v1/checkpoint/{run_id}/async` as it completes, and answer the call only with what
cannot be run inline (a sleep, a wait, a failed step, parallel steps) or with `RunComplete`.

A checkpointed step is stored exactly as one the call had answered: a `StepCompleted` applied
under the lease of the execution that made the call. `qi_id` carries that lease (its take's
epoch and owner), so a checkpoint from an execution whose lease was lost (the worker died and
another took the run, or the run was cancelled) stores nothing and is refused with 409, which
the SDK reads as a stale dispatch: it stops running steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..engine.outcomes import Lease, Outcome, StepCompleted
from ..payloads import PayloadError, PayloadTooLarge, dumps, unstorable
from .protocol import MAX_OPS, step_name

#: The SDK versions that checkpoint when the call offers it (4.x does by default; 3.x only
#: when the app opts in, and is called the classic way here). inngest-py does not checkpoint.
_CHECKPOINTING_SDK = re.compile(r"^js:v(\d+)\.")
#: Opcodes a checkpoint stores; `StepPlanned` (a step about to run, for Inngest's traces) is
#: accepted and ignored; any other is refused.
STORED_OPS = ("StepRun", "Step")
IGNORED_OPS = ("StepPlanned",)


def offered(sdk: str | None) -> bool:
    """Whether calls to an app synced with this SDK (`js:v4.24.0`) offer checkpointing."""
    found = _CHECKPOINTING_SDK.match(sdk or "")
    return found is not None and int(found.group(1)) >= 4


def context(function_id: str, lease: Lease) -> dict[str, str]:
    """What a call's `ctx` carries to offer checkpointing: the function (`fn_id`, Inngest's
    internal id; here the run's function id) and the execution's lease (`qi_id`, Inngest's
    queue item; the SDK sends both back with each checkpoint)."""
    return {"fn_id": function_id, "qi_id": f"{lease.epoch}:{lease.owner}"}


class CheckpointError(ValueError):
    """A checkpoint this server refuses: `status` and a message naming what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's request: the lease its call was made under, the function it names, and
    its completed steps (their `seq` counted from 0 within it, see `outcomes`)."""

    lease: Lease
    function_id: str
    steps: list[StepCompleted]

    def outcomes(self, ended: int, retrying: Mapping[str, int]) -> list[Outcome]:
        """The steps as outcomes, placed after the run's `ended` steps (the memo's order) and
        at the attempt a step being retried has reached (`retrying`: its failed attempts)."""
        return [replace(s, seq=ended + s.seq, attempt=retrying.get(s.step_id, 0))
                for s in self.steps]


def parse(body: Any, run_id: str, now: int, step_limit: int) -> Checkpoint:
    """`POST /v1/checkpoint/{run_id}/async`'s body: `{run_id, fn_id, qi_id, steps, ...}`
    (`request_id`, `generation_id`, `request_started_at` and `ts` are not needed). Raises
    `CheckpointError` naming the first thing wrong."""
    if not isinstance(body, dict):
        raise CheckpointError(400, "the body must be an object: {\"run_id\", \"fn_id\", "
                                   "\"qi_id\", \"steps\": [...]}")
    if body.get("run_id") not in (None, run_id):
        raise CheckpointError(400, f"run_id {str(body['run_id'])[:100]!r} is not the run of "
                                   f"the path ({run_id})")
    function_id = body.get("fn_id")
    if not isinstance(function_id, str) or not function_id:
        raise CheckpointError(400, "fn_id must be the function id the call gave in ctx.fn_id")
    lease = _lease(run_id, body.get("qi_id"))
    raw = body.get("steps")
    if not isinstance(raw, list):
        raise CheckpointError(400, "steps must be a list of opcodes")
    if len(raw) > MAX_OPS:
        raise CheckpointError(400, f"steps has {len(raw)} opcodes, over {MAX_OPS}")
    steps: list[StepCompleted] = []
    for i, op in enumerate(raw):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise CheckpointError(400, f"steps[{i}] must be an object with op and id")
        if op["op"] in IGNORED_OPS:
            continue
        if op["op"] not in STORED_OPS:
            raise CheckpointError(400, f"steps[{i}]: opcode {op['op'][:50]!r} cannot be "
                                       f"checkpointed (only {', '.join(STORED_OPS)}); answer "
                                       "it to the call instead")
        step = _step(i, op, len(steps), now, step_limit)
        if any(s.step_id == step.step_id for s in steps):
            raise CheckpointError(400, f"steps[{i}]: step {step.step_id!r} is in the "
                                       "checkpoint twice")
        steps.append(step)
    return Checkpoint(lease, function_id, steps)


def _lease(run_id: str, qi_id: Any) -> Lease:
    """The lease a call's `ctx.qi_id` carried (`context`)."""
    epoch, _, owner = qi_id.partition(":") if isinstance(qi_id, str) else ("", "", "")
    if not epoch.isdigit() or not owner or len(qi_id) > 512 or unstorable(owner):
        raise CheckpointError(400, "qi_id must be the value the call gave in ctx.qi_id "
                                   f"(\"<take>:<worker>\"), got {str(qi_id)[:100]!r}")
    return Lease(run_id, owner, int(epoch))


def _step(i: int, op: dict[str, Any], seq: int, now: int, limit: int) -> StepCompleted:
    sid = op.get("id")
    if not isinstance(sid, str) or not sid or len(sid) > 512 or unstorable(sid):
        raise CheckpointError(400, f"steps[{i}].id must be a step id (1 to 512 characters, "
                                   f"no U+0000), got {str(sid)[:100]!r}")
    try:
        output = dumps(op.get("data"), f"the output of step {sid}", limit)
    except PayloadTooLarge as exc:
        raise CheckpointError(413, str(exc)) from None
    except PayloadError as exc:
        raise CheckpointError(400, f"steps[{i}]: {exc}") from None
    started, ended = _timing(i, op.get("timing"), now)
    return StepCompleted(sid, seq, output, started, ended, name=step_name(op))


def _timing(i: int, timing: Any, now: int) -> tuple[int, int]:
    """When the step ran: the SDK's `timing` (Go's interval: `a` its start and `b` its
    duration, in nanoseconds), kept within the run's clock (not after now); without it, now."""
    if timing is None:
        return now, now
    if not isinstance(timing, dict) or not all(
            isinstance(timing.get(k), int | float) and not isinstance(timing.get(k), bool)
            and 0 <= timing[k] < 2 ** 63 for k in ("a", "b")):
        raise CheckpointError(400, f"steps[{i}].timing must be {{\"a\": start, \"b\": "
                                   "duration}} in nanoseconds")
    started = min(int(timing["a"]) // 1_000_000, now)
    return started, min(started + int(timing["b"]) // 1_000_000, now)
