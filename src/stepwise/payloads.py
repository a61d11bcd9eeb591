"""JSON in and out: one strict encoding for everything stepwise stores, with size limits."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Size limits in bytes; over one is a 413 or a step error, never a crash."""

    event_bytes: int = 1 * MiB
    request_bytes: int = 10 * MiB
    step_output_bytes: int = 4 * MiB

    def __post_init__(self) -> None:
        for name in ("event_bytes", "request_bytes", "step_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


class PayloadError(ValueError):
    """A value cannot be stored as JSON, or is too large."""


class PayloadTooLarge(PayloadError):
    """A value is over its size limit."""


_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any, what: str, limit: int | None = None) -> str:
    """Encode `value` as compact JSON, naming `what` in any error."""
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to serialize") from None
    if limit is not None and len(text) * 4 > limit:
        # A character is at most 4 bytes in UTF-8: encode only when the limit may be crossed.
        size = len(text.encode())
        if size > limit:
            raise PayloadTooLarge(f"{what} is {size} bytes, over the limit of {limit} bytes")
    return text


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
    except RecursionError:
        raise PayloadError("JSON is nested too deeply") from None


def new_id() -> str:
    """A 26-character, time-ordered, random id (ULID layout, Crockford base32)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    chars = []
    for _ in range(26):
        chars.append(alphabet[value & 31])
        value >>= 5
    return "".join(reversed(chars))
