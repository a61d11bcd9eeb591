"""In-band syncs: outside dev mode, a sync is what the app itself answers, signed.

Both SDKs sync "out of band" (`POST /fn/register`) with only the signing key's hash as a
bearer: no signature, no timestamp (inngest-py `net.fetch_with_auth_fallback`, inngest-js
`InngestCommHandler.register`), so a captured sync could be replayed, or a new one made, by
anyone who saw that header once. A server with a signing key therefore takes such a post only
as a request to sync the app at its URL: it asks the app itself with a signed
`PUT {"url": ...}` marked `X-Inngest-Sync-Kind: in_band` (as Inngest's cloud does), and stores
the functions of the app's answer only when that answer is signed with the key, fresh (within
`signing.MAX_SKEW_S`) and not seen before. A replayed post then re-reads the app as it is now.
"""

from __future__ import annotations

from typing import Any

import httpx

from .. import signing
from ..payloads import PayloadError, loads

#: Longest wait for the app's in-band answer (the SDK's own sync post gives up after 30 s).
TIMEOUT_S = 20.0
#: The in-band answer's fields that are not the sync's: the app's self-description (which
#: holds hashes of its keys) and where it runs.
_NOT_STORED = {"inspection", "env", "platform", "sdk_author", "sdk_language", "sdk_version",
               "app_id"}


class InBandError(Exception):
    """The app did not confirm the sync; `status` is the HTTP status to refuse it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Confirmations:
    """One server's in-band syncs: the URLs being asked now (an SDK that cannot answer in-band
    syncs out of band instead, which must not start another confirmation), and the answers'
    signatures already taken."""

    def __init__(self) -> None:
        self.asking: set[str] = set()
        self.seen = signing.Seen()

    async def confirm(self, url: str, key: str, fallback: str | None, now_s: int,
                      client: httpx.AsyncClient | None = None) -> dict[str, Any]:
        """The app's signed answer at `url`, as a register body; `InBandError` otherwise."""
        if url in self.asking:
            raise InBandError(409, (
                f"this server is asking the app at {url} to sync in-band now, and it answered "
                "with an out-of-band sync instead: the app's SDK must answer in-band syncs "
                "(inngest-py 0.5, inngest-js 3.x or later, INNGEST_ALLOW_IN_BAND_SYNC not "
                "false, and a cloud-mode client with INNGEST_SIGNING_KEY set)"))
        self.asking.add(url)
        try:
            return await self._ask(url, key, fallback, now_s, client)
        finally:
            self.asking.discard(url)

    async def _ask(self, url: str, key: str, fallback: str | None, now_s: int,
                   client: httpx.AsyncClient | None) -> dict[str, Any]:
        body = signing.canonical({"url": url})
        headers = {"Content-Type": "application/json", "X-Inngest-Sync-Kind": "in_band",
                   "X-Inngest-Server-Kind": "cloud",
                   "X-Inngest-Signature": signing.sign(body, key, now_s)}
        own = client is None
        http = client or httpx.AsyncClient(follow_redirects=False)
        try:
            answer = await http.put(url, content=body, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise InBandError(400, f"could not ask the app at {url} to confirm the sync "
                                   f"in-band: {type(exc).__name__}: {exc}"[:500]) from None
        finally:
            if own:
                await http.aclose()
        return self._read(url, answer, key, fallback, now_s)

    def _read(self, url: str, answer: httpx.Response, key: str, fallback: str | None,
              now_s: int) -> dict[str, Any]:
        if answer.headers.get("x-inngest-sync-kind") != "in_band" or \
                answer.status_code != 200:
            raise InBandError(400, (
                f"the app at {url} did not confirm the sync in-band (HTTP "
                f"{answer.status_code}, sync kind "
                f"{answer.headers.get('x-inngest-sync-kind')!r}): {_snippet(answer)}"))
        header = answer.headers.get("x-inngest-signature")
        wrong = signing.verify(answer.content, header, key, now_s, fallback)
        if wrong is not None:
            raise InBandError(401, f"the in-band sync answer of the app at {url}: "
                                   f"{wrong.replace('the answer', 'it')}")
        assert header is not None
        if not self.seen.first_time(header, now_s):
            raise InBandError(401, f"the in-band sync answer of the app at {url} was "
                                   "taken before (a replayed answer)")
        try:
            raw = loads(answer.content)
        except PayloadError as exc:
            raise InBandError(400, f"the in-band sync answer of the app at {url} is not "
                                   f"JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InBandError(400, f"the in-band sync answer of the app at {url} is not an "
                                   "object")
        return register_body(raw)


def register_body(answer: dict[str, Any]) -> dict[str, Any]:
    """An in-band answer (both SDKs' `InBandSynchronizeResponse`) in the shape of the
    out-of-band sync that `registration.parse` reads."""
    body = {k: v for k, v in answer.items() if k not in _NOT_STORED}
    body["appName"] = answer.get("app_id")
    if not isinstance(body.get("sdk"), str):  # inngest-py names language and version apart
        language, version = answer.get("sdk_language"), answer.get("sdk_version")
        body["sdk"] = f"{language}:v{version}" if isinstance(language, str) and \
            isinstance(version, str) else ""
    body.setdefault("v", "0.1")
    return body


def _snippet(answer: httpx.Response) -> str:
    text = answer.text[:200].replace("\n", " ")
    return text or "an empty body"
