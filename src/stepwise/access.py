"""Who may call what over HTTP: credentials, allowed hosts and origins, body types.

One ASGI gate in front of every route, so a new endpoint is protected by default:
- `/healthz` is open; sending events takes the event key (or the API key); everything else
  (management API, dashboard, docs, metrics, unknown paths) takes the API key, as
  `Authorization: Bearer <key>` or HTTP Basic with the key as password (what a browser sends
  for the dashboard).
- In dev mode there are no keys, so the gate defends the developer's machine instead: only
  allowed `Host` names (DNS rebinding) and no cross-site requests (`Origin`, `Sec-Fetch-Site`).
- Always: a change (POST) must come from this server's own pages or from a client that is not
  a browser (no cross-site `Origin`: a browser would send its saved dashboard login with a
  form posted from another site), a request body must be JSON, and no NUL may hide in a path
  or query (PostgreSQL cannot store it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import signing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/healthz"})
EVENT_PATHS = frozenset({"/api/v1/events"})
#: The Inngest SDKs' event route: `POST /e/<event key>`.
SDK_EVENT_PREFIX = "/e/"
#: What an SDK app calls with its signing key's hash as bearer: its sync, and its run data
#: (`use_api`); the API key works there too.
SDK_KEY_PATHS = ("/fn/register", "/v0/runs/", "/v1/signals")
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


@dataclass(frozen=True)
class Access:
    """The rules one server applies. No key means that part is open (dev mode, or a server
    started with --insecure on purpose)."""

    api_key: str | None = None
    event_key: str | None = None
    #: Host names a request may address (None: any); dev mode allows only local names.
    allowed_hosts: frozenset[str] | None = None
    #: Refuse requests that a browser marks as coming from another site.
    same_origin_only: bool = False
    #: The Inngest signing key SDK apps share with this server (see `signing`).
    signing_key: str | None = None
    #: A second signing key accepted while keys rotate (`--signing-key-fallback`).
    signing_fallback: str | None = None
    #: Dev mode (`stepwise dev`): SDK apps see a dev server, not a "cloud" one.
    dev_mode: bool = False
    #: Host names an SDK app may be synced at (its URL and every function's): None, any.
    #: Whoever holds the signing key can sync; with a list, not point runs elsewhere.
    sdk_hosts: frozenset[str] | None = None

    def sdk_host_refused(self, urls: list[str]) -> str | None:
        """The first host of `urls` this server does not allow SDK apps at, if any."""
        if self.sdk_hosts is None:
            return None
        for url in urls:
            host = (urlsplit(url).hostname or "").lower()
            if host not in self.sdk_hosts:
                return host
        return None

    @property
    def server_kind(self) -> str:
        """What SDK apps are told this server is (`X-Inngest-Server-Kind`)."""
        return "dev" if self.dev_mode else "cloud"

    @classmethod
    def dev(cls, extra_hosts: frozenset[str] = frozenset()) -> Access:
        return cls(allowed_hosts=LOCAL_HOSTS | extra_hosts, same_origin_only=True,
                   dev_mode=True)


def mask(key: str) -> str:
    """A key as it may be printed: enough to tell keys apart, not enough to use one."""
    return key[:4] + "…" if len(key) >= 12 else "…"


def _matches(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode(), key.encode())


def credential(headers: dict[bytes, bytes]) -> str | None:
    """The secret in `Authorization`: a Bearer token, or the password of HTTP Basic."""
    value = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if scheme.lower() == "basic" and token:
        try:
            decoded = base64.b64decode(token, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def host_name(value: str) -> str:
    """`example.com:8288` -> `example.com`; `[::1]:8288` -> `::1`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class Gate:
    """ASGI middleware applying `Access` to every HTTP request, answering refusals in JSON."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refusal
        await respond(send, status, message, extra)

    def check(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """None to let the request through, else (status, error message, extra headers)."""
        access = self.access
        headers = dict(scope["headers"])
        path: str = scope["path"]
        raw = scope.get("raw_path") or b""
        if b"\x00" in raw or b"%00" in raw or b"%00" in scope.get("query_string", b""):
            return 400, "the URL contains a NUL character (%00)", []
        if access.allowed_hosts is not None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in access.allowed_hosts:
                return 403, (f"Host {host!r} is not allowed here (allowed: "
                             f"{', '.join(sorted(access.allowed_hosts))}; add one with "
                             "--allow-host)"), []
        if access.same_origin_only:
            origin = headers.get(b"origin", b"").decode("latin-1")
            if origin and origin != "null":
                origin_host = (urlsplit(origin).hostname or "").lower()
                if access.allowed_hosts is not None and origin_host not in access.allowed_hosts:
                    return 403, f"cross-site request from {origin!r} refused", []
            elif origin == "null" or headers.get(b"sec-fetch-site") == b"cross-site":
                return 403, "cross-site request refused", []
        if scope["method"].encode() in _BODY_METHODS:
            refusal = _check_cross_site(headers) or _check_body_type(headers)
            if refusal is not None:
                return refusal
        if path in OPEN_PATHS:
            return None
        given = credential(headers)
        if path in EVENT_PATHS and scope["method"] == "POST":
            keys = [k for k in (access.event_key, access.api_key) if k is not None]
            if not keys:
                return None
            if given is not None and any(_matches(given, k) for k in keys):
                return None
            return 401, ("missing or wrong event key: send 'Authorization: Bearer <event key>'"
                         ), [(b"www-authenticate", b'Bearer realm="stepwise events"')]
        if path.startswith(SDK_EVENT_PREFIX) and scope["method"] == "POST":
            key = path[len(SDK_EVENT_PREFIX):]  # the SDKs put the event key in the path
            keys = [k for k in (access.event_key, access.api_key) if k is not None]
            if not keys or any(_matches(key, k) for k in keys):
                return None
            return 401, "wrong event key in the URL (/e/<event key>)", []
        if access.api_key is None or (given is not None and _matches(given, access.api_key)):
            return None
        if path.startswith(SDK_KEY_PATHS):
            if access.signing_key is not None and given is not None and \
                    signing.accepts_bearer(given, access.signing_key,
                                           access.signing_fallback):
                return None
            return 401, ("missing or wrong API key or signing key: an SDK app syncs with the "
                         "hash of the signing key this server was started with "
                         "(--signing-key) as 'Authorization: Bearer <hash>', so set "
                         "INNGEST_SIGNING_KEY in the app to that key"
                         ), [(b"www-authenticate", b'Bearer realm="stepwise sdk"')]
        return 401, ("missing or wrong API key: send 'Authorization: Bearer <API key>' (in a "
                     "browser, log in with any user name and the API key as password)"
                     ), [(b"www-authenticate", b'Basic realm="stepwise", charset="UTF-8"')]


def _check_cross_site(headers: dict[bytes, bytes]
                      ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """A browser sends its saved Basic credential with a form posted from any site: a change
    whose `Origin` is not this server itself is refused (clients other than browsers send no
    `Origin`)."""
    origin = headers.get(b"origin", b"").decode("latin-1").strip().lower()
    if not origin and headers.get(b"sec-fetch-site") != b"cross-site":
        return None
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if origin and origin != "null" and urlsplit(origin).netloc == host:
        return None
    return 403, f"cross-site request from {origin or 'another site'!r} refused", []


def _check_body_type(headers: dict[bytes, bytes]
                     ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """A body must be declared JSON; a bodiless request (cancel, replay) may omit the type."""
    content_type = headers.get(b"content-type")
    has_body = (headers.get(b"content-length", b"0").strip() not in (b"0", b"")
                or b"transfer-encoding" in headers)
    if content_type is None and not has_body:
        return None
    media = (content_type or b"").split(b";")[0].strip().lower()
    if media == b"application/json" or media.endswith(b"+json"):
        return None
    shown = media.decode("latin-1") or "none"
    return 415, (f"the body must be JSON: send 'Content-Type: application/json' (got "
                 f"{shown})"), []


async def respond(send: Send, status: int, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer `{"error": message}` straight from ASGI (before any route runs)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
