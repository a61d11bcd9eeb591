"""Signing in to the dashboard: a page with a form (a role's key, and a name for the audit
log), single sign-on through OpenID Connect when configured (`oidc`), sign-out, and
`GET /api/v1/me` (who the dashboard is signed in as).

A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure over https), stored
hashed (`engine.sessions`), ending at sign-out or after its lifetime; its CSRF token goes in a
second cookie the dashboard's script reads and sends back as `X-CSRF-Token` with each change.
Programs keep using keys as bearer tokens.
"""

from __future__ import annotations

import hmac
import html
import logging
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..access import CSRF_COOKIE, PRINCIPAL, SESSION_COOKIE, Principal, cookie
from .models import JSONText, Me
from .oidc import PENDING_COOKIE, PENDING_S, SignInFailed
from .openapi import errors
from .state import Server, ServerDep

log = logging.getLogger("stepwise.server")
router = APIRouter(include_in_schema=False)
api_router = APIRouter(default_response_class=JSONText)

#: The longest name one may give at sign-in (it is shown in the audit log).
MAX_NAME_CHARS = 64
MAX_FORM_BYTES = 4096


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this server only (never `//other.host`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target \
            or any(ord(c) < 32 for c in target):
        return "/runs"
    return target


@router.get("/signin")
async def signin_page(server: ServerDep, request: Request) -> HTMLResponse:
    then = safe_next(request.query_params.get("next"))
    return _page(server, then, request.query_params.get("error"))


@router.post("/signin")
async def signin(server: ServerDep, request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _page(server, "/runs", "the form is too large", 413)
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    then = safe_next(form.get("next"))
    if server.access.api_key is None:
        return RedirectResponse(then, status_code=303)
    key = form.get("key", "").strip()
    name = " ".join(form.get("name", "").split())
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        return _page(server, then, f"the name must be printable, at most {MAX_NAME_CHARS} "
                                   "characters", 400)
    role = server.access.key_role(key) if key else None
    if role is None:
        log.warning("sign-in refused: wrong key (from %s)", _client(request))
        return _page(server, then, "That key is not a viewer, operator or API key of this "
                                   "server.", 401)
    kind = "API key" if role == "admin" else f"{role} key"
    actor = f"{name} ({kind})" if name else kind
    return await _open_session(server, request, actor, role, then)


@router.get("/signin/oidc")
async def signin_oidc(server: ServerDep, request: Request) -> Response:
    client = server.signin.oidc
    if client is None:
        return _page(server, "/runs", "Single sign-on is not configured on this server.", 404)
    then = safe_next(request.query_params.get("next"))
    try:
        url, pending = await client.start(client.redirect_uri(str(request.base_url)), then)
    except SignInFailed as exc:
        return _page(server, then, f"Single sign-on is unavailable: {exc}", 502)
    answer = RedirectResponse(url, status_code=303)
    answer.set_cookie(PENDING_COOKIE, pending, max_age=PENDING_S, path="/signin/oidc",
                      httponly=True, samesite="lax", secure=_https(request))
    return answer


@router.get("/signin/oidc/callback")
async def signin_oidc_callback(server: ServerDep, request: Request) -> Response:
    client = server.signin.oidc
    if client is None:
        return _page(server, "/runs", "Single sign-on is not configured on this server.", 404)
    params = {k: v for k, v in request.query_params.items()}
    try:
        identity, then = await client.finish(request.cookies.get(PENDING_COOKIE), params,
                                             client.redirect_uri(str(request.base_url)))
    except SignInFailed as exc:
        log.warning("single sign-on refused: %s", exc)
        return _page(server, "/runs", f"Single sign-on failed: {exc}", 401)
    role = server.access.oidc_role(identity.name)
    if role is None:
        log.warning("single sign-on refused: %s has no role here", identity.name)
        await server.engine.record_audit(identity.name, "none", "sign-in refused", "", 403,
                                         {"via": "oidc", "reason": "no role"})
        return _page(server, then, f"{identity.name} may not use this dashboard: ask its "
                                   "operator for a role (--oidc-role).", 403)
    answer = await _open_session(server, request, identity.name, role, safe_next(then),
                                 via="oidc")
    answer.delete_cookie(PENDING_COOKIE, path="/signin/oidc")
    return answer


@router.post("/signout")
async def signout(server: ServerDep, request: Request) -> Response:
    headers = dict(request.scope["headers"])
    token = cookie(headers, SESSION_COOKIE)
    session = await server.engine.find_session(token) if token else None
    if session is not None:
        sent = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return JSONText({"error": "sign-out must carry the session's CSRF token "
                                      "(X-CSRF-Token)"}, status_code=403)
        await server.engine.end_session(token or "")
        await server.engine.record_audit(session.actor, session.role, "sign-out", "", 200,
                                         {})
    answer = JSONText({"signed_out": session is not None})
    answer.delete_cookie(SESSION_COOKIE, path="/")
    answer.delete_cookie(CSRF_COOKIE, path="/")
    return answer


@api_router.get("/api/v1/me", response_model=Me, responses=errors(401),
                summary="Who this request is made as: actor, role, and how it was proved")
async def me(request: Request) -> Me:
    principal: Principal | None = request.scope.get(PRINCIPAL)
    if principal is None:  # only open paths come without one
        return Me(actor="anyone", role="viewer", via="open", signed_in=False)
    return Me(actor=principal.actor, role=principal.role, via=principal.via,
              signed_in=principal.via == "session")


async def _open_session(server: Server, request: Request, actor: str, role: str, then: str,
                        via: str = "key") -> Response:
    token, session = await server.engine.create_session(actor, role, server.signin.session_ms)
    await server.engine.record_audit(actor, role, "sign-in", "", 200,
                                     {"via": via, "from": _client(request)})
    log.info("signed in: %s as %s", actor, role)
    answer = RedirectResponse(then, status_code=303)
    max_age = server.signin.session_ms // 1000
    secure = _https(request)
    answer.set_cookie(SESSION_COOKIE, token, max_age=max_age, path="/", httponly=True,
                      samesite="lax", secure=secure)
    answer.set_cookie(CSRF_COOKIE, session.csrf, max_age=max_age, path="/", httponly=False,
                      samesite="lax", secure=secure)
    return answer


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _page(server: Server, then: str, error: str | None, status: int = 200) -> HTMLResponse:
    """The sign-in page: plain HTML that works without script."""
    e = html.escape
    problem = f'<p class="notice bad" id="signin-error">{e(error)}</p>' if error else ""
    if server.access.api_key is None:
        form = ('<p>This server has no keys (dev mode, or --insecure): there is nothing to '
                f'sign in to.</p><p><a href="{e(then)}">Open the dashboard</a></p>')
    else:
        sso = ""
        if server.signin.oidc is not None:
            sso = (f'<p><a class="button" id="signin-sso" href="/signin/oidc?next='
                   f'{e(quote(then, safe=""))}">Sign in with single sign-on</a></p>'
                   '<p class="muted">or with a key:</p>')
        form = f"""{sso}<form method="post" action="/signin" id="signin-form">
<input type="hidden" name="next" value="{e(then)}">
<label>Key <input type="password" name="key" autocomplete="current-password" required
 autofocus></label>
<label>Your name <span class="muted">(optional, shown in the audit log)</span>
 <input type="text" name="name" maxlength="{MAX_NAME_CHARS}" autocomplete="name"></label>
<button type="submit">Sign in</button>
</form>
<p class="muted">A viewer key reads; an operator key also replays, cancels and sends events;
the API key may do everything.</p>"""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · stepwise</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/app.css">
</head><body class="signin"><header><span class="brand">stepwise</span></header>
<main id="page"><h1>Sign in</h1>{problem}{form}</main></body></html>"""
    return HTMLResponse(page, status_code=status,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})
