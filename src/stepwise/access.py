"""Who may call what over HTTP: credentials, roles, allowed hosts and origins, body types.

One ASGI gate in front of every route, so a new endpoint is protected by default:
- `/healthz` and the sign-in pages are open; sending events takes the event key (or a key or
  session of an operator); everything else (management API, dashboard, docs, metrics, unknown
  paths) takes a key, as `Authorization: Bearer <key>` (or the password of HTTP Basic), or a
  dashboard session (a cookie from `/signin`, whose changes carry its CSRF token).
- Roles: a viewer reads; an operator also replays, cancels and sends events; an admin (the API
  key) also changes retention, prunes and erases. Each role has its own key; a session has the
  role its key or its single sign-on identity (`oidc_roles`) gave it.
- A browser that reaches a page unsigned is sent to `/signin`; programs get a JSON 401.
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
from urllib.parse import quote, urlsplit

from . import signing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/healthz"})
#: The dashboard's static files (the sign-in page uses its style; they hold no data).
OPEN_PREFIXES = ("/assets/",)
#: The sign-in pages: open, since they are how a browser gets a session.
SIGNIN_PATHS = frozenset({"/signin", "/signin/oidc", "/signin/oidc/callback", "/signout"})
#: A form post is the one body that is not JSON: the sign-in form works without script.
FORM_PATHS = frozenset({"/signin"})
SESSION_COOKIE = "stepwise_session"
#: The session's CSRF token, readable by the dashboard's script, which sends it back as
#: `X-CSRF-Token` with every change.
CSRF_COOKIE = "stepwise_csrf"
#: Lowest first; each role may do what the ones before it may.
ROLES = ("viewer", "operator", "admin")
#: Changes only an admin may make: `(method, path)`.
ADMIN_ACTIONS = frozenset({("PUT", "/api/v1/retention"), ("POST", "/api/v1/prune"),
                           ("POST", "/api/v1/erase")})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Reads sent as POST (a GraphQL query): a viewer may, and the audit log does not record them.
READ_POSTS = frozenset({"/v0/gql"})
EVENT_PATHS = frozenset({"/api/v1/events"})
#: The Inngest SDKs' event route: `POST /e/<event key>`.
SDK_EVENT_PREFIX = "/e/"
#: What an SDK app calls with its signing key's hash as bearer: its sync, its run data
#: (`use_api`), signals and checkpoints; the API key works there too.
SDK_KEY_PATHS = ("/fn/register", "/v0/runs/", "/v1/signals", "/v1/checkpoint/")
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


def role_allows(role: str, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def needed_role(method: str, path: str) -> str:
    """The least role that may make this request."""
    if method in _READ_METHODS or (method == "POST" and path in READ_POSTS):
        return "viewer"
    return "admin" if (method, path) in ADMIN_ACTIONS else "operator"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a name for the audit log, a role, and how they proved it."""

    actor: str
    role: str
    #: "key", "session", "signing key" (an SDK app), or "open" (no keys: dev mode, --insecure)
    via: str


#: The principal of a request, as the gate leaves it in the ASGI scope.
PRINCIPAL = "stepwise.principal"

#: What the gate asks to resolve a session cookie (None: no such session or expired).
SessionLookup = Callable[[str], Awaitable["tuple[Principal, str] | None"]]


class LookupUnavailable(Exception):
    """Raised by a `SessionLookup` that cannot tell (its database is down): answered 503."""


@dataclass(frozen=True)
class Access:
    """The rules one server applies. No key means that part is open (dev mode, or a server
    started with --insecure on purpose)."""

    #: The admin's key (and what programs use); None: everything is open.
    api_key: str | None = None
    event_key: str | None = None
    operator_key: str | None = None
    viewer_key: str | None = None
    #: Who may sign in through single sign-on, and as what: (pattern, role), where a pattern
    #: is an email address, `@domain` or `*`; the most specific match wins.
    oidc_roles: tuple[tuple[str, str], ...] = ()
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
    #: Store a posted SDK sync as posted (--allow-unconfirmed-sync), instead of asking the
    #: app at its URL to confirm it in-band: for apps that cannot answer in-band.
    unconfirmed_syncs: bool = False

    def sdk_host_refused(self, urls: list[str]) -> str | None:
        """The first host of `urls` this server does not allow SDK apps at, if any."""
        if self.sdk_hosts is None:
            return None
        for url in urls:
            host = (urlsplit(url).hostname or "").lower()
            if host not in self.sdk_hosts:
                return host
        return None

    def key_role(self, given: str) -> str | None:
        """The role a key gives (the event key gives none: it only sends events)."""
        for key, role in ((self.api_key, "admin"), (self.operator_key, "operator"),
                          (self.viewer_key, "viewer")):
            if key is not None and _matches(given, key):
                return role
        return None

    def oidc_role(self, email: str) -> str | None:
        """The role single sign-on gives `email`: an exact address before `@domain`, before
        `*`; None when no rule admits it."""
        email = email.lower()
        domain = "@" + email.rpartition("@")[2]
        rules = dict(self.oidc_roles)
        for pattern in (email, domain, "*"):
            if pattern in rules:
                return rules[pattern]
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


Refusal = tuple[int, str, list[tuple[bytes, bytes]]]


class Gate:
    """ASGI middleware applying `Access` to every HTTP request, answering refusals in JSON
    (and a browser without a session with a redirect to the sign-in page). A request let
    through carries its `Principal` in `scope[PRINCIPAL]` (None on open paths)."""

    def __init__(self, app: ASGIApp, access: Access,
                 sessions: SessionLookup | None = None) -> None:
        self.app = app
        self.access = access
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is None:
            refusal = await self.identify(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refusal
        await respond(send, status, message, extra)

    def check(self, scope: Scope) -> Refusal | None:
        """What may be refused on the request alone: hosts, origins, body types, NULs."""
        access = self.access
        headers = dict(scope["headers"])
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
            refusal = _check_cross_site(headers)
            if refusal is None and scope["path"] not in FORM_PATHS:
                refusal = _check_body_type(headers)
            if refusal is not None:
                return refusal
        return None

    async def identify(self, scope: Scope) -> Refusal | None:
        """Who is calling, and whether their role may make this request; leaves the
        `Principal` in the scope."""
        access = self.access
        headers = dict(scope["headers"])
        path: str = scope["path"]
        method: str = scope["method"]
        scope[PRINCIPAL] = None
        if path in OPEN_PATHS or path in SIGNIN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        given = credential(headers)
        if path.startswith(SDK_EVENT_PREFIX) and method == "POST":
            key = path[len(SDK_EVENT_PREFIX):]  # the SDKs put the event key in the path
            keys = [k for k in (access.event_key, access.api_key, access.operator_key)
                    if k is not None]
            if not keys or any(_matches(key, k) for k in keys):
                return None
            return 401, "wrong event key in the URL (/e/<event key>)", []
        sending = path in EVENT_PATHS and method == "POST"
        if sending and access.event_key is not None and given is not None and \
                _matches(given, access.event_key):
            return None
        if access.api_key is None:
            if sending and access.event_key is not None:
                return _no_event_key()
            scope[PRINCIPAL] = Principal("anyone (no API key)", "admin", "open")
            return None
        principal: Principal | None = None
        if given is not None:
            role = access.key_role(given)
            if role is not None:
                principal = Principal(f"{role} key" if role != "admin" else "API key", role,
                                      "key")
            elif path.startswith(SDK_KEY_PATHS) and access.signing_key is not None and \
                    signing.accepts_bearer(given, access.signing_key, access.signing_fallback):
                scope[PRINCIPAL] = Principal("SDK app (signing key)", "operator",
                                             "signing key")
                return None
        else:
            token = cookie(headers, SESSION_COOKIE)
            try:
                found = await self.sessions(token) if token and self.sessions else None
            except LookupUnavailable:
                return 503, "cannot check the sign-in session now: try again shortly", [
                    (b"retry-after", b"2")]
            if found is not None:
                principal, csrf = found
                if method not in _READ_METHODS:
                    sent = headers.get(b"x-csrf-token", b"").decode("latin-1")
                    if not sent or not _matches(sent, csrf):
                        return 403, ("a change from a signed-in browser must carry its "
                                     "session's CSRF token (X-CSRF-Token header): reload "
                                     "the page"), []
        if principal is None:
            if sending:
                return _no_event_key()
            if path.startswith(SDK_KEY_PATHS) and access.signing_key is not None:
                return 401, ("missing or wrong API key or signing key: an SDK app syncs "
                             "with the hash of the signing key this server was started "
                             "with (--signing-key) as 'Authorization: Bearer <hash>', so "
                             "set INNGEST_SIGNING_KEY in the app to that key"
                             ), [(b"www-authenticate", b'Bearer realm="stepwise sdk"')]
            if wants_page(scope):
                target = path + ("?" + scope["query_string"].decode("latin-1")
                                 if scope.get("query_string") else "")
                return 303, "sign in first", [
                    (b"location", b"/signin?next=" + quote(target, safe="").encode())]
            return 401, ("missing or wrong API key: send 'Authorization: Bearer <key>' (in a "
                         "browser, sign in at /signin)"
                         ), [(b"www-authenticate", b'Bearer realm="stepwise"')]
        scope[PRINCIPAL] = principal  # the audit trail records a refusal of a role too
        needed = "operator" if sending else needed_role(method, path)
        if not role_allows(principal.role, needed):
            return 403, (f"{principal.actor} has the {principal.role} role, which may not "
                         f"{method} {path}: that needs the {needed} role"), []
        return None


def _no_event_key() -> Refusal:
    return 401, "missing or wrong event key: send 'Authorization: Bearer <event key>'", [
        (b"www-authenticate", b'Bearer realm="stepwise events"')]


def cookie(headers: dict[bytes, bytes], name: str) -> str | None:
    """One cookie's value from the `Cookie` header."""
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def wants_page(scope: Scope) -> bool:
    """A browser navigating to a page (not a script's call to the API, nor a program)."""
    path: str = scope["path"]
    if scope["method"] not in ("GET", "HEAD") or path == "/api" or path.startswith("/api/"):
        return False
    return "text/html" in dict(scope["headers"]).get(b"accept", b"").decode("latin-1")


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
