"""JSON in and out: one strict encoding for everything stepwise stores, with size limits."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Size limits (bytes, and events per request); over one is a 413 or a step error, never
    a crash."""

    event_bytes: int = 1 * MiB
    request_bytes: int = 10 * MiB
    step_output_bytes: int = 4 * MiB
    events_per_request: int = 5000

    def __post_init__(self) -> None:
        for name in ("event_bytes", "request_bytes", "step_output_bytes", "events_per_request"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


class PayloadError(ValueError):
    """A value cannot be stored as JSON, or is too large."""


class PayloadTooLarge(PayloadError):
    """A value is over its size limit."""


def _rich(value: Any) -> Any:
    """JSON for the rich values a step or function may return: pydantic models, dataclasses,
    datetimes (ISO 8601), decimals and UUIDs (strings), enums (their value), sets and tuples
    (lists). A declared return type turns them back (see `results`)."""
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        kind = type(value)
        raise TypeError(f"a {kind.__module__}.{kind.__qualname__} cannot be stored (JSON "
                        "values, pydantic models, dataclasses, datetimes, decimals, UUIDs, "
                        "enums and sets can)") from None


_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            default=_rich)

#: The deepest nesting of objects and lists accepted in stored JSON (event data, step and run
#: outputs): deeper values are refused when they come in, so none can break a listing later.
MAX_DEPTH = 100


def dumps(value: Any, what: str, limit: int | None = None) -> str:
    """Encode `value` as compact JSON, naming `what` in any error.

    Refuses what JSON or the databases cannot hold: NaN, lone surrogates, nesting deeper than
    MAX_DEPTH, and (with `limit`) more than `limit` bytes of UTF-8.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    if encoded_too_deep(text, value):
        raise PayloadError(f"{what} is nested deeper than {MAX_DEPTH} levels")
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode())
        except UnicodeEncodeError as exc:
            raise PayloadError(f"{what} is not valid Unicode: {exc.reason} at character "
                               f"{exc.start}") from None
    if limit is not None and size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes, over the limit of {limit} bytes")
    return text


def encoded_too_deep(text: str, value: Any) -> bool:
    """Whether `value`, encoded as `text`, nests more than MAX_DEPTH levels (walked only when
    the text is long enough: n levels take at least 2n characters)."""
    return len(text) > 2 * MAX_DEPTH and too_deep(value)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether objects and lists nest more than `limit` levels in `value` (iterative: no
    recursion limit to hit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return False


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str | bytes) -> Any:
    """Decode JSON (UTF-8 when bytes), rejecting NaN and Infinity, which JSON does not have."""
    try:
        if not isinstance(text, str):
            text = text.decode()
        return _decoder.decode(text)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not valid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise PayloadError(f"unreadable JSON value: {exc}") from None
    except RecursionError:
        raise PayloadError("JSON is nested too deeply") from None


#: What no database text column can hold: U+0000 (PostgreSQL) and lone surrogates (UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` for a plain text column (a log line): U+0000 and lone surrogates, which the
    databases cannot store, read as U+FFFD. JSON columns need none of this: JSON escapes them."""
    return _UNSTORABLE.sub("\ufffd", text)


def unstorable(text: str) -> bool:
    """Whether `text` holds what no database text column can (see `storable_text`)."""
    return _UNSTORABLE.search(text) is not None


def new_id() -> str:
    """A 26-character, time-ordered, random id (ULID layout, Crockford base32)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    chars = []
    for _ in range(26):
        chars.append(alphabet[value & 31])
        value >>= 5
    return "".join(reversed(chars))
