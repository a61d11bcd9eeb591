"""Events: what triggers runs, as users build them and as the HTTP API validates them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .payloads import loads

MAX_NAME = 256
MAX_ID = 256
#: Names and ids: some visible character, and no control characters (documented in the
#: OpenAPI schema; the validators below say which rule a value broke).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
#: The latest `ts` accepted: 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
MAX_TS = 253_402_300_799_999


def check_text(value: str, what: str) -> str:
    """A name or id stored as text: no control characters (PostgreSQL cannot hold NUL) and no
    lone surrogates (not encodable as UTF-8)."""
    if not value.isprintable() and any(c < " " or c == "\x7f" for c in value):
        raise ValueError(f"{what} must not contain control characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None
    return value


@dataclass(frozen=True)
class Event:
    """An event: `name`, a JSON object `data`, an optional idempotency `id` and a `ts` in ms."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    ts: int | None = None


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: its `data` already encoded as checked JSON text."""

    id: str
    name: str
    data: str
    ts: int
    trace: str | None = None  # W3C traceparent of the sender (see `stepwise.tracing`)
    #: An SDK event's `meta` as JSON (`{"sessions": {...}}`, see `sessions_meta`), passed on
    #: to the SDK functions it starts.
    meta: str | None = None


class EventIn(BaseModel):
    """An event as accepted from outside; unknown fields are refused so typos do not pass."""

    model_config = ConfigDict(extra="forbid", strict=False)

    name: str = Field(min_length=1, max_length=MAX_NAME,
                      json_schema_extra={"pattern": TEXT_PATTERN},
                      description="Event name, e.g. user.signup: not blank, no control "
                                  "characters")
    data: dict[str, Any] = Field(default_factory=dict, description="A JSON object")
    id: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID,
        json_schema_extra={"pattern": TEXT_PATTERN},
        description="Idempotency id: an id already stored is not stored again")
    ts: int | None = Field(
        default=None, ge=0, le=MAX_TS,
        description="Milliseconds since the epoch (at most year 9999); a future ts delays delivery")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("event name must not be blank")
        return check_text(value, "event name")

    @field_validator("id")
    @classmethod
    def _id_is_text(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "event id")

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_from_datetime(cls, value: Any) -> Any:
        if isinstance(value, bool | str | bytes):  # JSON true, or a string of digits
            raise ValueError("ts must be an integer of milliseconds since the epoch")
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        return value


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One readable line per problem, naming the field, e.g. `events[2].name: Field required`."""
    parts = []
    for err in exc.errors():
        loc = prefix
        for item in err["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else (f".{item}" if loc else str(item))
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts)


def coerce_events(events: Any) -> list[EventIn]:
    """Accept an Event, a dict of the same shape, or a list of them (as `send_event` does)."""
    items = events if isinstance(events, list | tuple) else [events]
    out = []
    for index, item in enumerate(items):
        raw = (
            {"name": item.name, "data": item.data, "id": item.id, "ts": item.ts}
            if isinstance(item, Event) else item
        )
        if not isinstance(raw, dict):
            raise TypeError(f"events[{index}] must be a stepwise.Event or a dict, got "
                            f"{type(item).__name__}")
        try:
            out.append(EventIn.model_validate(raw))
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, f"events[{index}]")) from None
    return out


#: Inngest's bounds on an event's sessions: entries, and bytes of a key.
MAX_SESSIONS = 5
MAX_SESSION_KEY_BYTES = 128


def sessions_meta(meta: Any, where: str) -> dict[str, Any] | None:
    """An SDK event's `meta` as Inngest resolves it before storing: `sessions` (set by the
    sender; a null value drops that key, a null `sessions` drops them all) win over
    `propagated_sessions` (those of the run that sent it), which fill the free places (at
    most 5) in bytewise key order and are not kept themselves. Values are strings or numbers
    (stored as strings). None: no sessions. Raises ValueError naming what is wrong."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}.meta must be an object")
    manual = meta.get("sessions", {})
    if manual is None:
        return None
    propagated = meta.get("propagated_sessions") or {}
    if not isinstance(manual, dict) or not isinstance(propagated, dict):
        raise ValueError(f"{where}.meta.sessions and .propagated_sessions must be objects")
    sessions = {key: _session_value(value, f"{where}.meta.sessions.{key}")
                for key, value in manual.items() if value is not None}
    dropped = {key for key, value in manual.items() if value is None}
    for key in sorted(propagated, key=lambda k: k.encode("utf-8", "surrogatepass")):
        if len(sessions) >= MAX_SESSIONS:
            break
        if key not in sessions and key not in dropped and propagated[key] is not None:
            sessions[key] = _session_value(propagated[key],
                                           f"{where}.meta.propagated_sessions.{key}")
    if len(sessions) > MAX_SESSIONS:
        raise ValueError(f"{where}.meta.sessions has {len(sessions)} entries, over "
                         f"{MAX_SESSIONS}")
    for key in sessions:
        check_text(key, f"{where}.meta.sessions key")
        if not key or len(key.encode()) > MAX_SESSION_KEY_BYTES:
            raise ValueError(f"{where}.meta.sessions keys must be 1 to "
                             f"{MAX_SESSION_KEY_BYTES} bytes, got {key[:40]!r}")
    return {"sessions": sessions} if sessions else None


def _session_value(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where} must be a string or a number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_text(str(value), where)


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event (a row, or a `StoredEvent`'s fields) as functions and expressions see it."""
    return {"name": row["name"], "data": loads(row["data"]), "id": row["id"], "ts": row["ts"]}
