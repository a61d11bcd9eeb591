"""Inngest's request signing, for SDK apps outside dev mode.

stepwise signs each call to an app (`X-Inngest-Signature: t=<unix seconds>&s=<hex>`, an
HMAC-SHA256 over the JCS-canonical body and the timestamp, keyed by the signing key without
its `signkey-<env>-` prefix), checks the app's signed answer the same way over the raw body,
and takes the key's hash (`sha256(hex-decode(key))`) as the bearer an SDK syncs with. That
bearer is static (any captured sync replays), so a sync is only trusted once the app has
confirmed it in a signed, fresh answer that was not seen before (`Seen`). While
keys rotate, a fallback key is accepted beside it (as the SDKs' INNGEST_SIGNING_KEY_FALLBACK):
calls are signed with the key, answers and bearers may use either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qs

import rfc8785

_PREFIX = re.compile(r"^signkey-\w+-")
#: How far an answer's signature time may be from ours (clock skew plus a slow call).
MAX_SKEW_S = 5 * 60


class SigningKeyError(ValueError):
    """A signing key that is not `signkey-<env>-<hex>` or `<hex>`."""


def check_key(key: str) -> str:
    """The key if it is usable: the SDKs hex-decode it to hash it."""
    bare = strip_prefix(key)
    try:
        if len(bare) < 32 or len(bytes.fromhex(bare)) < 16:
            raise ValueError
    except ValueError:
        raise SigningKeyError("a signing key is at least 32 hex digits, optionally after a "
                              "`signkey-<env>-` prefix (make one with `stepwise new-key "
                              "--signing`)") from None
    return key


def strip_prefix(key: str) -> str:
    found = _PREFIX.match(key)
    return key[found.end():] if found else key


def bearer(key: str) -> str:
    """The token an SDK sends as `Authorization: Bearer` to sync and to read run data."""
    return hashlib.sha256(bytes.fromhex(strip_prefix(key))).hexdigest()


def accepts_bearer(token: str, key: str, fallback: str | None = None) -> bool:
    """Python sends the bare hash, JS may keep the key's prefix in front of it. With a
    `fallback` key (a rotation under way), its hash is accepted too."""
    given = strip_prefix(token).encode()
    return any(hmac.compare_digest(given, bearer(k).encode())
               for k in (key, fallback) if k is not None)


def canonical(body: Any) -> bytes:
    """The body as sent and signed: RFC 8785 (JCS) JSON, which the SDKs check against."""
    return rfc8785.dumps(body)


def _mac(key: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(strip_prefix(key).encode(), body, hashlib.sha256)
    mac.update(str(timestamp).encode())
    return mac.hexdigest()


class Seen:
    """Signatures already accepted, each kept while it could still pass the clock check: the
    same signed answer offered twice (a replay) is refused the second time."""

    def __init__(self) -> None:
        self._at: dict[str, int] = {}

    def first_time(self, header: str, now_s: int) -> bool:
        """True the first time `header` (a verified `t=...&s=...`) is offered."""
        self._at = {h: t for h, t in self._at.items() if now_s - t <= 2 * MAX_SKEW_S}
        if header in self._at:
            return False
        self._at[header] = now_s
        return True


def sign(body: bytes, key: str, now_s: int) -> str:
    return f"t={now_s}&s={_mac(key, body, now_s)}"


def verify(body: bytes, header: str | None, key: str, now_s: int,
           fallback: str | None = None) -> str | None:
    """None when `header` signs `body` with `key` (or the `fallback` key) recently, else why
    not. An SDK signs its answer with whichever of its keys verified our call."""
    if not header:
        return "the answer is not signed (no X-Inngest-Signature)"
    fields = parse_qs(header)
    try:
        timestamp = int(fields["t"][0])
        signature = fields["s"][0]
    except (KeyError, ValueError, IndexError):
        return f"malformed X-Inngest-Signature {header[:80]!r}"
    if abs(now_s - timestamp) > MAX_SKEW_S:
        return f"the answer's signature is {abs(now_s - timestamp)} s off this server's clock"
    if not any(hmac.compare_digest(signature.encode(), _mac(k, body, timestamp).encode())
               for k in (key, fallback) if k is not None):
        return "the answer's signature does not match the signing key" + (
            "" if fallback is None else " or its fallback")
    return None
