"""Roles, dashboard sign-in sessions and the audit log, through the HTTP API on both backends:
each role's key may do what its role allows and no more; a browser signs in with a form, gets
HttpOnly SameSite cookies, must send its CSRF token with changes, signs out, and its session
expires; every management action and sign-in lands in the audit log, refusals included."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import stepwise
from stepwise.access import Access, needed_role
from stepwise.testing import Harness

API_KEY = "api-key-0123456789abcdef"
OPERATOR_KEY = "operator-key-0123456789abcdef"
VIEWER_KEY = "viewer-key-0123456789abcdef"
EVENT_KEY = "event-key-0123456789abcdef"
ACCESS = Access(api_key=API_KEY, event_key=EVENT_KEY, operator_key=OPERATOR_KEY,
                viewer_key=VIEWER_KEY)
FORM = {"content-type": "application/x-www-form-urlencoded"}


def make_app() -> stepwise.App:
    app = stepwise.App("signin")

    @app.function(id="charge", trigger=stepwise.on_event("order.placed"), retries=0)
    async def charge(ctx: stepwise.Context) -> Any:
        raise stepwise.NonRetriableError("card declined")

    return app


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def failed_run(h: Harness) -> str:
    sent = await h.http.post("/api/v1/events", json={"name": "order.placed", "data": {}},
                             headers=bearer(EVENT_KEY))
    assert sent.status_code == 200
    await h.settle()
    runs = (await h.http.get("/api/v1/runs", headers=bearer(VIEWER_KEY))).json()["runs"]
    assert [r["status"] for r in runs] == ["failed"]
    return str(runs[0]["id"])


def browser(h: Harness) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.api),
                             base_url="http://stepwise.test")


async def sign_in(client: httpx.AsyncClient, key: str, name: str = "",
                  then: str = "/runs") -> httpx.Response:
    return await client.post("/signin", content=f"key={key}&name={name}&next={then}",
                             headers=FORM)


async def test_each_roles_key_may_do_what_its_role_allows(db: str) -> None:
    async with Harness(make_app(), db, access=ACCESS) as h:
        run_id = await failed_run(h)
        replay = f"/api/v1/runs/{run_id}/replay"
        refused = await h.http.post(replay, headers=bearer(VIEWER_KEY))
        assert refused.status_code == 403
        assert "viewer role" in refused.json()["error"] and "operator" in refused.json()["error"]
        assert (await h.http.post("/api/v1/events", json={"name": "x"},
                                  headers=bearer(VIEWER_KEY))).status_code == 403
        assert (await h.http.post(replay, headers=bearer(OPERATOR_KEY))).status_code == 200
        assert (await h.http.post("/api/v1/events", json={"name": "x"},
                                  headers=bearer(OPERATOR_KEY))).status_code == 200
        retention = {"completed": "7d"}
        assert (await h.http.put("/api/v1/retention", json=retention,
                                 headers=bearer(OPERATOR_KEY))).status_code == 403
        assert (await h.http.post("/api/v1/erase", json={"event_data": "a=1", "dry_run": True},
                                  headers=bearer(OPERATOR_KEY))).status_code == 403
        assert (await h.http.put("/api/v1/retention", json=retention,
                                 headers=bearer(API_KEY))).status_code == 200
        # The event key sends events and does nothing else.
        assert (await h.http.get("/api/v1/runs", headers=bearer(EVENT_KEY))).status_code == 401
        # A GraphQL query is a read sent as POST (Inngest's dev server read API).
        assert needed_role("POST", "/v0/gql") == "viewer"
        assert needed_role("POST", "/api/v1/prune") == "admin"
        me = (await h.http.get("/api/v1/me", headers=bearer(OPERATOR_KEY))).json()
        assert me == {"actor": "operator key", "role": "operator", "via": "key",
                      "signed_in": False}


async def test_a_browser_signs_in_with_a_form_and_out_again(db: str) -> None:
    async with Harness(make_app(), db, access=ACCESS) as h, browser(h) as client:
        run_id = await failed_run(h)
        page = await client.get("/runs?status=failed", headers={"accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/signin?next=%2Fruns%3Fstatus%3Dfailed"
        api = await client.get("/api/v1/runs", headers={"accept": "text/html"})
        assert api.status_code == 401 and api.headers["www-authenticate"].startswith("Bearer")
        form = await client.get(page.headers["location"])
        assert form.status_code == 200 and '<form method="post" action="/signin"' in form.text
        assert 'value="/runs?status=failed"' in form.text

        wrong = await sign_in(client, "not-a-key")
        assert wrong.status_code == 401 and "not a viewer, operator or API key" in wrong.text
        assert (await sign_in(client, EVENT_KEY)).status_code == 401
        assert "stepwise_session" not in client.cookies

        answer = await sign_in(client, OPERATOR_KEY, "Ada", "/runs/x")
        assert answer.status_code == 303 and answer.headers["location"] == "/runs/x"
        cookies = answer.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("stepwise_session="))
        csrf_cookie = next(c for c in cookies if c.startswith("stepwise_csrf="))
        assert "HttpOnly" in session and "SameSite=lax" in session and "Path=/" in session
        assert "HttpOnly" not in csrf_cookie and "SameSite=lax" in csrf_cookie
        me = (await client.get("/api/v1/me")).json()
        assert me == {"actor": "Ada (operator key)", "role": "operator", "via": "session",
                      "signed_in": True}

        replay = f"/api/v1/runs/{run_id}/replay"
        without = await client.post(replay)
        assert without.status_code == 403 and "CSRF" in without.json()["error"]
        csrf = client.cookies["stepwise_csrf"]
        assert (await client.post(replay, headers={"x-csrf-token": csrf + "x"})
                ).status_code == 403
        assert (await client.post(replay, headers={"x-csrf-token": csrf})).status_code == 200
        assert (await client.put("/api/v1/retention", json={"completed": "1d"},
                                 headers={"x-csrf-token": csrf})).status_code == 403

        # The database holds the token's hash only.
        token = client.cookies["stepwise_session"]
        stored = await h.storage.read(lambda tx: tx.raw_all(
            "SELECT token_hash FROM sessions", {}))
        assert len(stored) == 1 and token not in stored[0]["token_hash"]

        assert (await client.post("/signout")).status_code == 403  # no CSRF token
        out = await client.post("/signout", headers={"x-csrf-token": csrf})
        assert out.status_code == 200 and out.json() == {"signed_out": True}
        assert "stepwise_session" not in client.cookies
        stolen = await client.get("/api/v1/me", headers={"cookie": f"stepwise_session={token}"})
        assert stolen.status_code == 401


async def test_sign_in_goes_only_to_this_servers_pages_and_not_cross_site(db: str) -> None:
    async with Harness(make_app(), db, access=ACCESS) as h, browser(h) as client:
        for then in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            answer = await sign_in(client, VIEWER_KEY, then=then)
            assert answer.status_code == 303 and answer.headers["location"] == "/runs"
        # A form posted from another site (login CSRF) is refused.
        forged = await client.post("/signin", content=f"key={VIEWER_KEY}",
                                   headers={**FORM, "origin": "https://evil.example"})
        assert forged.status_code == 403


async def test_a_session_expires(db: str) -> None:
    async with Harness(make_app(), db, access=ACCESS) as h, browser(h) as client:
        assert (await sign_in(client, VIEWER_KEY)).status_code == 303
        assert (await client.get("/api/v1/runs")).status_code == 200
        h.clock.advance(12 * 3600 - 60)
        assert (await client.get("/api/v1/runs")).status_code == 200
        h.clock.advance(120)
        assert (await client.get("/api/v1/runs")).status_code == 401


async def test_the_audit_log_records_every_management_action_and_sign_in(db: str) -> None:
    async with Harness(make_app(), db, access=ACCESS) as h, browser(h) as client:
        run_id = await failed_run(h)
        await sign_in(client, OPERATOR_KEY, "Ada")
        csrf = {"x-csrf-token": client.cookies["stepwise_csrf"]}
        assert (await client.post(f"/api/v1/runs/{run_id}/replay", headers=csrf)
                ).status_code == 200
        assert (await h.http.post(f"/api/v1/runs/{run_id}/cancel", headers=bearer(VIEWER_KEY))
                ).status_code == 403
        assert (await h.http.post("/api/v1/runs/replay", json={"status": "failed",
                                                               "dry_run": True},
                                  headers=bearer(API_KEY))).status_code == 200
        await client.post("/signout", headers=csrf)
        await h.http.get("/api/v1/runs", headers=bearer(API_KEY))  # reads are not recorded
        await h.http.post("/api/v1/events", json={"name": "x"}, headers=bearer(EVENT_KEY))
        erase = await h.http.post("/api/v1/erase", json={"event_data": "user_id=42",
                                                         "dry_run": True},
                                  headers=bearer(API_KEY))
        assert erase.status_code == 200

        log = (await h.http.get("/api/v1/audit", headers=bearer(VIEWER_KEY))).json()
        rows = [(e["actor"], e["role"], e["action"], e["target"], e["status"])
                for e in log["entries"]]
        erased = log["entries"].pop(0)  # an erasure is recorded with its filter
        assert (erased["action"], erased["detail"]["body"]["event_data"]) == (
            "POST /api/v1/erase", "user_id=42")
        assert rows.pop(0)[:2] == ("API key", "admin")
        assert rows == [
            ("Ada (operator key)", "operator", "sign-out", "", 200),
            ("API key", "admin", "POST /api/v1/runs/replay", "", 200),
            ("viewer key", "viewer", "POST /api/v1/runs/{run_id}/cancel", run_id, 403),
            ("Ada (operator key)", "operator", "POST /api/v1/runs/{run_id}/replay", run_id, 200),
            ("Ada (operator key)", "operator", "sign-in", "", 200),
        ]
        bulk = log["entries"][1]
        assert bulk["detail"]["body"] == {"status": "failed", "dry_run": True}
        assert log["entries"][3]["at"] and log["next"] is None

        first = (await h.http.get("/api/v1/audit?limit=3", headers=bearer(API_KEY))).json()
        assert [e["action"] for e in first["entries"]] == [
            "POST /api/v1/erase", "sign-out", "POST /api/v1/runs/replay"]
        rest = (await h.http.get(f"/api/v1/audit?limit=10&before={first['next']}",
                                 headers=bearer(API_KEY))).json()
        assert [e["id"] for e in first["entries"] + rest["entries"]] == \
            [erased["id"]] + [e["id"] for e in log["entries"]]
        for cursor in ("x", "9" * 40 + ":A", "1:" + "A" * 27):  # found by schemathesis
            bad = await h.http.get(f"/api/v1/audit?before={cursor}", headers=bearer(API_KEY))
            assert bad.status_code in (400, 422) and "error" in bad.json(), bad.text


@pytest.mark.parametrize("path", ["/signin", "/signin?next=/runs"])
async def test_the_sign_in_page_is_open_and_says_what_each_key_does(db: str, path: str) -> None:
    async with Harness(make_app(), db, access=ACCESS) as h, browser(h) as client:
        page = await client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "viewer key reads" in page.text and "single sign-on" not in page.text
        assert page.headers["cache-control"] == "no-store"
        assert (await client.get("/assets/app.css")).status_code == 200
        query = parse_qs(urlsplit(path).query)
        assert f'value="{query.get("next", ["/runs"])[0]}"' in page.text
