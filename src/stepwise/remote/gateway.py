"""Gateway steps: the HTTP requests an SDK hands to the server instead of making them itself.

`step.fetch` (opcode `Gateway`) and `step.ai.infer` (`AIGateway`) answer a call with the
request; the executor makes it (`Gateway.call`) and the response becomes the step's value, as
Inngest's executor does (`handleGeneratorGateway`, `handleGeneratorAIGateway`):

- fetch: any HTTP status is a response (`{url, headers, body, status_code}`, the body as
  text); only a request that could not be made fails the attempt (`GatewayError`, retried).
- AI: the provider's JSON answer is the value; a status over 299 or a request that could not
  be made fails the attempt (`AIGatewayError`, retried; the provider's `Retry-After` is kept).
  The auth key goes where the format wants it (`Authorization: Bearer`, Anthropic's
  `x-api-key`, Bedrock's `Authorization`, Gemini's `key` query parameter).

Nothing of the request is stored: a step keeps the response (or the error), never the
request's headers, auth key or body, and requests are never logged with their credentials.

Where a request may go (`HostPolicy`): by default only to public addresses. The host is
resolved and every address checked before connecting, and the connection is made to the
address checked (no second lookup a DNS rebinding could answer differently); each redirect
is checked the same way. Loopback, private, link-local (cloud metadata), shared, reserved
and NAT64 addresses are refused unless the host is allowed by name. `stepwise dev` allows
every host, as Inngest's dev server does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from ..engine.outcomes import StepCompleted, StepFailed
from ..errors import ErrorInfo
from ..payloads import PayloadError, dumps, loads

#: HTTP methods a fetch may use (Inngest's list).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS",
                     "TRACE"})
#: Redirects followed at most (each one checked against the host policy).
MAX_REDIRECTS = 10
#: Default bound on a response body (decoded), the default step output limit.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts gateway requests may reach: public addresses, plus the hosts `allowed` by
    name at any address; `any_host`: every address (development)."""

    allowed: frozenset[str] = frozenset()
    any_host: bool = False

    @classmethod
    def from_names(cls, names: tuple[str, ...] | list[str]) -> HostPolicy:
        """From `--gateway-allow-host` values: host names, or `*` for every host."""
        lowered = frozenset(n.strip().lower().strip("[]") for n in names if n.strip())
        return cls(any_host=True) if "*" in lowered else cls(allowed=lowered)

    def refused(self, host: str, addresses: list[str]) -> str | None:
        """Why `host` (resolved to `addresses`) may not be reached, or None."""
        if self.any_host or host.lower() in self.allowed:
            return None
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                return f"{address} is not an IP address"
            mapped = getattr(ip, "ipv4_mapped", None)
            if mapped is not None:
                ip = mapped
            if not ip.is_global or ip.is_multicast or ip in _NAT64:
                return (f"{host} is at {ip}, which is not a public address; allow it with "
                        "--gateway-allow-host")
        return None


class GatewayRefused(Exception):
    """The host policy refused a request (or a redirect)."""


class _GuardedTransport(httpx.AsyncBaseTransport):
    """Checks where each request (each redirect too) goes, then connects to the address it
    checked, keeping the host name for `Host` and TLS."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if self.policy.any_host or host.lower() in self.policy.allowed:
            return await self.inner.handle_async_request(request)
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}", request=request) from None
        addresses = [str(info[4][0]) for info in infos]
        reason = self.policy.refused(host, addresses)
        if reason is not None:
            raise GatewayRefused(reason)
        request.extensions = {**request.extensions, "sni_hostname": host}
        original = request.url
        failure: httpx.ConnectError | None = None
        for address in dict.fromkeys(addresses):  # each checked address, in the resolver's
            request.url = original.copy_with(host=address)  # order, until one connects
            try:
                return await self.inner.handle_async_request(request)
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True)
class GatewayCall:
    """A request an app handed over (one opcode), to make for step `step_id`."""

    step_id: str
    seq: int
    started_at: int
    attempt: int
    name: str | None
    ai: bool  # AIGateway (step.ai.infer); else Gateway (step.fetch)
    method: str = "GET"
    url: str = ""
    #: Hold credentials: never shown, logged or stored.
    headers: list[tuple[str, str]] = field(default_factory=list, repr=False)
    body: bytes | None = field(default=None, repr=False)
    format: str = ""
    #: Why the request cannot be made at all (the step then fails without a retry).
    invalid: str | None = None

    @property
    def error_name(self) -> str:
        return "AIGatewayError" if self.ai else "GatewayError"


def parse(kind: str, step_id: str, seq: int, opts: dict[str, Any], started_at: int,
          attempt: int, name: str | None) -> GatewayCall:
    """The request of a `Gateway` or `AIGateway` opcode's `opts`, as the SDKs send it."""
    ai = kind == "AIGateway"
    call = GatewayCall(step_id, seq, started_at, attempt, name, ai)
    raw_url = opts.get("url")
    parts = urlsplit(raw_url) if isinstance(raw_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return _invalid(call, f"needs an http(s) URL, got {_shown(raw_url)}")
    url = str(raw_url)
    raw_headers = opts.get("headers") or {}
    if not isinstance(raw_headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_headers.items()):
        return _invalid(call, "headers must be an object of strings")
    if ai:
        return _ai_request(call, url, opts, list(raw_headers.items()))
    method = opts.get("method") or "POST"  # Inngest's default; the SDK sends GET by default
    if not isinstance(method, str) or method.upper() not in METHODS:
        return _invalid(call, f"invalid HTTP method {_shown(method)}")
    body = opts.get("body")
    if body is not None and not isinstance(body, str):
        return _invalid(call, "a body must be a string (what the SDK sends for a text body)")
    return GatewayCall(step_id, seq, started_at, attempt, name, False, method.upper(), url,
                       list(raw_headers.items()), None if body is None else body.encode())


def _ai_request(call: GatewayCall, url: str, opts: dict[str, Any],
                extra: list[tuple[str, str]]) -> GatewayCall:
    """The provider request: JSON, the auth key where its format wants it, then the
    adapter's own headers (as Inngest's `aigateway.Request` builds it)."""
    fmt = opts.get("format") or "openai-chat"
    key = opts.get("auth_key") or ""
    if not isinstance(fmt, str) or not isinstance(key, str):
        return _invalid(call, "format and auth_key must be strings")
    try:
        body = dumps(opts.get("body"), "the AI request body").encode()
    except PayloadError as exc:
        return _invalid(call, str(exc))
    headers = [("content-type", "application/json")]
    if key and fmt == "gemini":
        parts = urlsplit(url)
        query = [*parse_qsl(parts.query, keep_blank_values=True), ("key", key)]
        url = urlunsplit(parts._replace(query=urlencode(query)))
    elif key and fmt == "bedrock":
        headers.append(("authorization", key))
    elif key and fmt == "anthropic":
        headers.append(("x-api-key", key))
    elif key:
        headers.append(("authorization", f"Bearer {key}"))
    return GatewayCall(call.step_id, call.seq, call.started_at, call.attempt, call.name, True,
                       "POST", url, [*headers, *extra], body, fmt)


def _invalid(call: GatewayCall, reason: str) -> GatewayCall:
    what = "step.ai.infer" if call.ai else "step.fetch"
    return GatewayCall(call.step_id, call.seq, call.started_at, call.attempt, call.name,
                       call.ai, invalid=f"{what}: {reason}")


def _shown(value: Any) -> str:
    return repr(value)[:120]


def safe_url(url: str) -> str:
    """A URL as it may appear in an error or a log line: no query (it may hold a key)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _canonical(name: str) -> str:
    """`content-type` as Go writes header names: `Content-Type` (Inngest's response shape)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class Gateway:
    """Makes gateway requests for the executors of one process, under `policy`, reading at
    most `max_response_bytes` of a response."""

    def __init__(self, policy: HostPolicy | None = None, *,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 client: httpx.AsyncClient | None = None) -> None:
        self.policy = policy or HostPolicy()
        self.max_response_bytes = max_response_bytes
        self.client = client or httpx.AsyncClient(
            transport=_GuardedTransport(self.policy), follow_redirects=True,
            max_redirects=MAX_REDIRECTS, headers={"user-agent": "stepwise (Inngest gateway)"})

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, request: GatewayCall, timeout_s: float, now_ms: Any
                   ) -> StepCompleted | StepFailed:
        """Make the request; its step's outcome. `now_ms`: the clock, for the end time."""
        if request.invalid is not None:
            return self._failed(request, now_ms(), request.invalid, retriable=False)
        url = safe_url(request.url)
        try:
            async with asyncio.timeout(timeout_s):
                status, headers, body = await self._send(request)
        except GatewayRefused as exc:
            return self._failed(request, now_ms(), f"the request to {url} was refused: {exc}",
                                retriable=False)
        except _TooLarge:
            return self._failed(request, now_ms(), (
                f"the response from {url} is over {self.max_response_bytes} bytes, the "
                "gateway's response limit (the step output limit)"), retriable=False)
        except TimeoutError:
            return self._failed(request, now_ms(), (
                f"{url} did not answer within {timeout_s:g} s (the SDK call timeout)"))
        except (httpx.HTTPError, OSError) as exc:
            return self._failed(request, now_ms(), f"{type(exc).__name__}: {exc}")
        ended = now_ms()
        if not request.ai:
            value = {"url": request.url, "headers": headers,
                     "body": body.decode("utf-8", errors="replace"), "status_code": status}
            return StepCompleted(request.step_id, request.seq, dumps(value, "fetch response"),
                                 request.started_at, ended, request.attempt,
                                 name=request.name)
        text = body.decode("utf-8", errors="replace")
        if status > 299:
            try:
                data: Any = loads(body) if body else {"error": "Error making AI request"}
            except PayloadError:
                data = text
            return self._failed(request, ended, f"unsuccessful status code: {status}",
                                data=data, stack=text or None,
                                retry_after_ms=_retry_after_ms(headers.get("Retry-After")))
        try:
            answer = dumps(loads(body), "AI response")
        except PayloadError as exc:
            return self._failed(request, ended, f"the provider at {url} answered {status} "
                                f"with a body that is not JSON ({exc})")
        return StepCompleted(request.step_id, request.seq, answer, request.started_at, ended,
                             request.attempt, name=request.name)

    async def _send(self, request: GatewayCall) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (Go's names, repeats joined by commas, no Content-Encoding once
        decoded) and the decoded body, read up to the limit."""
        sent = self.client.build_request(request.method, request.url,
                                         headers=request.headers, content=request.body)
        response = await self.client.send(sent, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _TooLarge
                chunks.append(chunk)
        finally:
            await response.aclose()
        headers: dict[str, str] = {}
        for name, value in response.headers.multi_items():
            key = _canonical(name)
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        headers.pop("Content-Encoding", None)
        return response.status_code, headers, b"".join(chunks)

    @staticmethod
    def _failed(request: GatewayCall, ended: int, message: str, *, retriable: bool = True,
                data: Any = None, stack: str | None = None,
                retry_after_ms: int | None = None) -> StepFailed:
        what = "Error making AI request" if request.ai else "Error making gateway request"
        error: ErrorInfo = {"name": request.error_name, "message": f"{what}: {message}",
                            "step_id": request.step_id}
        if stack is not None:
            error["stack"] = stack
        if data is not None:
            error["data"] = data  # type: ignore[typeddict-unknown-key]
        return StepFailed(request.step_id, request.seq, error, request.started_at, ended,
                          request.attempt, retriable=retriable, retry_after_ms=retry_after_ms,
                          name=request.name)


class _TooLarge(Exception):
    pass


def _retry_after_ms(value: str | None) -> int | None:
    """A provider's `Retry-After` in seconds (what rate-limited APIs send)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip()) * 1000


class _RedactKeys(logging.Filter):
    """httpx logs each request's URL; a Gemini request carries its key in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
                isinstance(a, httpx.URL) and "key" in a.params for a in record.args):
            record.args = tuple(
                a.copy_with(params={k: ("…" if k == "key" else v) for k, v in a.params.items()})
                if isinstance(a, httpx.URL) else a for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_RedactKeys())
