"""Single sign-on to the dashboard with OpenID Connect (the authorization code flow, PKCE).

stepwise is the relying party: `/signin/oidc` sends the browser to the provider with a fresh
state, nonce and PKCE verifier (kept in a short-lived HttpOnly cookie of the browser that
started, so a callback it did not start is refused); the callback trades the code for tokens
and checks the ID token: its signature against the provider's published keys (joserfc), and
issuer, audience, expiry, nonce and access-token hash (authlib's `CodeIDToken`). Who may then
sign in, and as what role, is `Access.oidc_roles`: nobody unless a rule admits them.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

#: The cookie holding a sign-in in progress (state, nonce, verifier, where to go after).
PENDING_COOKIE = "stepwise_oidc"
PENDING_S = 600
#: The provider's metadata and keys are read again after this long (keys rotate).
METADATA_TTL_S = 3600.0
HTTP_TIMEOUT_S = 10.0
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class SignInFailed(Exception):
    """Single sign-on did not give an identity; the message says why, for the sign-in page."""


@dataclass(frozen=True)
class OidcSettings:
    #: The provider's issuer URL (its metadata is at /.well-known/openid-configuration).
    issuer: str
    client_id: str
    client_secret: str | None = None
    #: This server's address as the provider redirects browsers back to it; None: from each
    #: request's own address.
    public_url: str | None = None
    scopes: str = "openid email profile"

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"the OIDC issuer {self.issuer!r} is not an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK:
            raise ValueError(f"the OIDC issuer {self.issuer!r} must use https (plain http is "
                             "accepted for a provider on this machine only)")


@dataclass(frozen=True)
class Identity:
    #: The email address (or, without one, the provider's subject id).
    name: str
    claims: dict[str, Any]


@dataclass
class OidcClient:
    settings: OidcSettings
    _metadata: dict[str, Any] | None = None
    _keys: KeySet | None = None
    _read_at: float = 0.0
    _transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)

    def redirect_uri(self, base_url: str) -> str:
        base = (self.settings.public_url or base_url).rstrip("/")
        return f"{base}/signin/oidc/callback"

    async def start(self, redirect_uri: str, then: str) -> tuple[str, str]:
        """The provider's authorization URL, and the pending cookie's value."""
        metadata = await self._provider(force=False)
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        query = urlencode({
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri, "scope": self.settings.scopes, "state": state,
            "nonce": nonce, "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256"})
        endpoint = str(metadata["authorization_endpoint"])
        url = endpoint + ("&" if "?" in endpoint else "?") + query
        pending = {"state": state, "nonce": nonce, "verifier": verifier, "next": then,
                   "until": int(time.time()) + PENDING_S}
        return url, base64.urlsafe_b64encode(json.dumps(pending).encode()).decode()

    async def finish(self, pending_cookie: str | None, params: dict[str, str],
                     redirect_uri: str) -> tuple[Identity, str]:
        """The identity the provider vouches for, and where the browser goes next."""
        if "error" in params:
            raise SignInFailed(f"the provider refused: {params['error']}"
                               + (f" ({params['error_description']})"
                                  if params.get("error_description") else ""))
        pending = _read_pending(pending_cookie)
        code, state = params.get("code"), params.get("state")
        if not code or not state:
            raise SignInFailed("the provider's answer has no code or state")
        if not hmac.compare_digest(state.encode(), str(pending["state"]).encode()):
            raise SignInFailed("this sign-in was not started by this browser (state differs)")
        metadata = await self._provider(force=False)
        token = await self._token(metadata, code, str(pending["verifier"]), redirect_uri)
        claims = await self._id_token(metadata, token, str(pending["nonce"]))
        if claims.get("email") and claims.get("email_verified") is not False:
            name = str(claims["email"])
        elif claims.get("email"):
            raise SignInFailed(f"the provider has not verified the email {claims['email']}")
        else:
            name = str(claims["sub"])
        return Identity(name, claims), str(pending["next"])

    async def _provider(self, *, force: bool) -> dict[str, Any]:
        if self._metadata is not None and not force and \
                time.monotonic() - self._read_at < METADATA_TTL_S:
            return self._metadata
        issuer = self.settings.issuer.rstrip("/")
        metadata = await self._get_json(f"{issuer}/.well-known/openid-configuration")
        if str(metadata.get("issuer", "")).rstrip("/") != issuer:
            raise SignInFailed(f"the provider's metadata names the issuer "
                               f"{metadata.get('issuer')!r}, not {self.settings.issuer!r}")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(name), str):
                raise SignInFailed(f"the provider's metadata has no {name}")
        keys: Any = await self._get_json(str(metadata["jwks_uri"]))
        try:
            self._keys = KeySet.import_key_set(keys)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise SignInFailed(f"the provider's keys cannot be read: {exc}") from None
        self._metadata, self._read_at = metadata, time.monotonic()
        return metadata

    async def _token(self, metadata: dict[str, Any], code: str, verifier: str,
                     redirect_uri: str) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "code_verifier": verifier}
        methods = metadata.get("token_endpoint_auth_methods_supported") or \
            ["client_secret_basic"]
        auth: tuple[str | bytes, str | bytes] | None = None
        if self.settings.client_secret is None:
            form["client_id"] = self.settings.client_id
        elif "client_secret_basic" in methods:
            auth = (self.settings.client_id, self.settings.client_secret)
        else:
            form |= {"client_id": self.settings.client_id,
                     "client_secret": self.settings.client_secret}
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, transport=self._transport) as http:
            try:
                answer = await http.post(str(metadata["token_endpoint"]), data=form,
                                         auth=auth or httpx.USE_CLIENT_DEFAULT)
            except httpx.HTTPError as exc:
                raise SignInFailed(f"the provider's token endpoint did not answer: {exc}"
                                   ) from None
        body = _json(answer)
        if answer.status_code != 200 or not isinstance(body.get("id_token"), str):
            raise SignInFailed(f"the provider's token endpoint answered {answer.status_code}"
                               + (f": {body.get('error')}" if body.get("error") else
                                  " without an ID token"))
        return body

    async def _id_token(self, metadata: dict[str, Any], token: dict[str, Any], nonce: str
                        ) -> dict[str, Any]:
        algorithms = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        registry = JWSRegistry(algorithms=[a for a in algorithms if a != "none"])
        try:
            try:
                decoded = jwt.decode(token["id_token"], self._keys or KeySet([]),
                                     registry=registry)
            except JoseError:  # perhaps signed with a key published since: read them again
                await self._provider(force=True)
                decoded = jwt.decode(token["id_token"], self._keys or KeySet([]),
                                     registry=registry)
            claims = CodeIDToken(
                decoded.claims, decoded.header,
                {"iss": {"essential": True, "values": [str(metadata["issuer"])]},
                 "aud": {"essential": True, "values": [self.settings.client_id]}},
                {"nonce": nonce, "client_id": self.settings.client_id,
                 "access_token": token.get("access_token")})
            claims.validate(leeway=60)
        except (JoseError, ValueError) as exc:
            raise SignInFailed(f"the provider's ID token is not valid: {exc}") from None
        return dict(claims)

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, transport=self._transport) as http:
            try:
                answer = await http.get(url)
            except httpx.HTTPError as exc:
                raise SignInFailed(f"the provider at {url} did not answer: {exc}") from None
        if answer.status_code != 200:
            raise SignInFailed(f"the provider at {url} answered {answer.status_code}")
        return _json(answer)


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _read_pending(cookie: str | None) -> dict[str, Any]:
    if not cookie:
        raise SignInFailed("no sign-in in progress in this browser (it expires after "
                           f"{PENDING_S // 60} minutes): start again")
    try:
        pending = json.loads(base64.urlsafe_b64decode(cookie.encode()))
    except (ValueError, TypeError):
        raise SignInFailed("the sign-in cookie is damaged: start again") from None
    if not isinstance(pending, dict) or not all(
            isinstance(pending.get(k), str) for k in ("state", "nonce", "verifier", "next")):
        raise SignInFailed("the sign-in cookie is damaged: start again")
    if not isinstance(pending.get("until"), int) or pending["until"] < time.time():
        raise SignInFailed("the sign-in took too long: start again")
    return pending
