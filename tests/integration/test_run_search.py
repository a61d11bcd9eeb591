"""The runs search (`GET /api/v1/runs?q=`, engine/search.py) on both backends: by an error's
words (a failed attempt's too), a field of the event's data, an event name, a function, a run
id's start; its count (`total`, `total_exact`) and paging; values the index left out (found
by checking those events one by one); bulk operations over a search; bad searches refused;
and a database written before the index (migration 0020) indexed when it opens, to the same
terms as runs written after it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import stepwise
from stepwise.engine import search as engine_search
from stepwise.storage import open_storage
from stepwise.testing import Harness


class SmtpTimeout(Exception):
    pass


class CardDeclined(Exception):
    pass


def make_app() -> stepwise.App:
    app = stepwise.App("shop")
    attempts: dict[str, int] = {}

    def notify(order: dict[str, Any]) -> str:
        if order.get("fail"):
            raise SmtpTimeout(f"notify failed for order {order['order']}: SMTP timeout")
        return "sent"

    def charge(order: dict[str, Any]) -> str:
        key = str(order["order"])
        attempts[key] = attempts.get(key, 0) + 1
        if order.get("decline_once") and attempts[key] == 1:
            raise CardDeclined("card declined, try again")
        return "charged"

    @app.function(id="send-receipt", trigger=stepwise.on_event("order.paid"), retries=1)
    async def send_receipt(ctx: stepwise.Context) -> Any:
        await ctx.step.run("charge", charge, ctx.event.data)
        return await ctx.step.run("notify", notify, ctx.event.data)

    @app.function(id="save-cart", trigger=stepwise.on_event("cart.updated"),
                  debounce=stepwise.Debounce(timedelta(minutes=5), key="event.data.user"))
    async def save_cart(ctx: stepwise.Context) -> Any:
        return ctx.event.data["cart"]

    @app.function(id="sync-profile", trigger=stepwise.on_event("user.updated"))
    async def sync_profile(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("sync", lambda: "ok")

    return app


async def found(h: Harness, **params: Any) -> dict[str, Any]:
    response = await h.http.get("/api/v1/runs", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def ids(h: Harness, **params: Any) -> set[str]:
    return {r["event_id"] for r in (await found(h, **params))["runs"]}


async def test_search_by_error_words_event_data_names_functions_and_id_prefix(db: str) -> None:
    async with Harness(make_app(), db) as h:
        smtp = await h.send("order.paid", {"order": 7001, "fail": True,
                                           "user": {"id": 42, "email": "ada@example.com"}})
        declined = await h.send("order.paid", {"order": 7002, "decline_once": True,
                                               "user": {"id": 43, "vip": True}})
        plain = await h.send("order.paid", {"order": 7003, "user": {"id": 42,
                                                                   "name": "Ada Lovelace"}})
        profile = await h.send("user.updated", {"user": {"id": 42}})
        await h.settle()
        statuses = {r["event_id"]: r["status"] for r in await h.runs()}
        assert statuses == {smtp: "failed", declined: "completed", plain: "completed",
                            profile: "completed"}

        # An error's words, in any case, all of them; a failed attempt's error counts too.
        assert await ids(h, q="smtp") == {smtp}
        assert await ids(h, q="SMTP Timeout") == {smtp}
        assert await ids(h, q="smtptimeout") == {smtp}  # the error's name
        assert await ids(h, q="smtp declined") == set()
        assert await ids(h, q="declined") == {declined}
        assert await ids(h, q="error:declined") == {declined}
        assert await ids(h, q="timeout", status="completed") == set()
        assert await ids(h, q="timeout", status="failed") == {smtp}
        # A field of the event's data: numbers, strings, booleans, quoted with spaces.
        assert await ids(h, q="user.id=42") == {smtp, plain, profile}
        assert await ids(h, q="user.id=42 order=7003") == {plain}
        assert await ids(h, q='user.name="Ada Lovelace"') == {plain}
        assert await ids(h, q="user.email=ada@example.com") == {smtp}
        assert await ids(h, q="user.vip=true") == {declined}
        assert await ids(h, q="user.id=4") == set()  # whole values only
        assert await ids(h, event_data="user.id=42") == {smtp, plain, profile}
        assert await ids(h, event_data="user.id=42", q="timeout") == {smtp}
        # An event name; a function; a qualifier; with the exact filters.
        assert await ids(h, q="user.updated") == {profile}
        assert await ids(h, q="event:order.paid user.id=42") == {smtp, plain}
        assert await ids(h, event_name="order.paid") == {smtp, declined, plain}
        assert await ids(h, q="sync-profile") == {profile}
        assert await ids(h, q="function:send-receipt", function="sync-profile") == set()
        # A run id, whole or its start (in any case).
        run = (await found(h, event_id=declined))["runs"][0]
        assert await ids(h, q=run["id"]) == {declined}
        assert await ids(h, q=run["id"][:20].lower()) == {declined}
        assert await ids(h, q=f"id:{run['id']}") == {declined}
        assert await ids(h, q="0ZZZZZZZZZ") == set()  # no run's id: read as a word


async def test_a_debounced_run_is_found_by_its_last_event_only(db: str) -> None:
    async with Harness(make_app(), db) as h:
        await h.send("cart.updated", {"user": 1, "cart": "first"})
        last = await h.send("cart.updated", {"user": 1, "cart": "second"})
        await h.settle()
        [run] = (await found(h, function="save-cart"))["runs"]
        assert run["event_id"] == last and run["status"] == "completed"
        assert await ids(h, q="cart=second") == {last}
        assert await ids(h, q="cart=first") == set()
        assert await ids(h, q="user=1 save-cart") == {last}


async def test_the_count_and_paging_of_a_search(db: str, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    async with Harness(make_app(), db) as h:
        sent = [await h.send("user.updated", {"user": {"id": 5, "n": n}}) for n in range(7)]
        await h.send("user.updated", {"user": {"id": 6}})
        await h.settle()
        first = await found(h, q="user.id=5", limit=3)
        assert (first["total"], first["total_exact"]) == (7, True)
        seen = [r["event_id"] for r in first["runs"]]
        page = first
        while page["next"]:
            page = await found(h, q="user.id=5", limit=3, before=page["next"])
            assert (page["total"], page["total_exact"]) == (7, True)
            seen += [r["event_id"] for r in page["runs"]]
        assert seen == sent[::-1]  # newest first, each once
        everything = await found(h)
        assert (everything["total"], everything["total_exact"]) == (8, True)
        assert (await found(h, q="nothing-matches-this"))["total"] == 0

        monkeypatch.setattr(engine_search, "COUNT_LIMIT", 4)
        capped = await found(h, q="user.id=5", limit=2)
        assert (capped["total"], capped["total_exact"]) == (4, False)
        assert len(capped["runs"]) == 2
        exact = await found(h, q="user.id=6")
        assert (exact["total"], exact["total_exact"]) == (1, True)


async def test_values_left_out_of_the_index_are_still_found(db: str) -> None:
    """Past 64 values, or a value over 256 characters, the event is marked and checked."""
    from stepwise.storage import search

    wide = {f"k{i:02d}": i for i in range(search.MAX_DATA_TERMS)}
    wide["user"] = {"id": 99}  # depth 2: after all 64 top-level values, so left out
    long_text = "x" * (search.MAX_VALUE + 10)
    async with Harness(make_app(), db) as h:
        wide_id = await h.send("user.updated", wide)
        long_id = await h.send("user.updated", {"note": long_text, "user": {"id": 98}})
        other = await h.send("user.updated", {"user": {"id": 99}})
        await h.settle()
        assert await ids(h, q="user.id=99") == {wide_id, other}
        assert await ids(h, event_data="user.id=99") == {wide_id, other}
        assert await ids(h, q="k00=0") == {wide_id}  # indexed
        assert await ids(h, q=f"note={long_text}") == {long_id}
        assert await ids(h, q="user.id=98") == {long_id}  # the rest of that event is indexed
        counted = await found(h, q="user.id=99")
        assert (counted["total"], counted["total_exact"]) == (2, True)


async def test_bulk_operations_take_the_search(db: str) -> None:
    async with Harness(make_app(), db) as h:
        smtp = await h.send("order.paid", {"order": 1, "fail": True, "user": {"id": 1}})
        other = await h.send("order.paid", {"order": 2, "fail": True, "user": {"id": 2}})
        await h.settle()
        dry = await h.http.post("/api/v1/runs/replay", json={"q": "user.id=1 smtp",
                                                              "dry_run": True})
        assert dry.status_code == 200 and dry.json()["matched"] == 1
        done = await h.http.post("/api/v1/runs/replay", json={"q": "user.id=1 smtp"})
        assert done.json()["changed"] == 1
        await h.settle()
        attempts = {r["event_id"]: r["attempts"] for r in await h.runs()}
        assert attempts == {smtp: 2, other: 1}  # only the one matching was replayed


async def test_any_search_of_at_most_16_words_is_read_and_more_are_refused(db: str) -> None:
    """A quote left open is closed at the end; punctuation alone asks for nothing; over 16
    words is a 400 naming q (the API's schema says so)."""
    async with Harness(make_app(), db) as h:
        ada = await h.send("user.updated", {"user": {"name": "Ada L"}})
        other = await h.send("user.updated", {"user": {"name": "Grace"}})
        await h.settle()
        assert await ids(h, q='user.name="Ada L') == {ada}
        assert await ids(h, q="error:... !!") == {ada, other}
        assert await ids(h, q="a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r") == set()  # 18 words: read
        words = " ".join(f"w{i}" for i in range(17))
        response = await h.http.get("/api/v1/runs", params={"q": words})
        assert response.status_code == 400 and "q" in response.json()["error"]
        bulk = await h.http.post("/api/v1/runs/cancel", json={"q": words})
        assert bulk.status_code == 400 and "q" in bulk.json()["error"]


async def test_a_database_from_before_the_index_is_indexed_when_it_opens(db: str) -> None:
    """Runs stored without the index (the database as migration 19 left it) are found once
    the storage opened, by the same terms as those the running code writes."""
    async with Harness(make_app(), db) as h:
        smtp = await h.send("order.paid", {"order": 1, "fail": True, "user": {"id": 1}})
        declined = await h.send("order.paid", {"order": 2, "decline_once": True})
        await h.settle()
    await _write(db, _before_the_index)
    async with Harness(make_app(), db) as h:  # opens: migrates, then indexes the old runs
        assert await ids(h, q="user.id=1 smtp") == {smtp}
        assert await ids(h, q="declined") == {declined}
        assert await ids(h, event_name="order.paid") == {smtp, declined}
        new = await h.send("order.paid", {"order": 3, "fail": True, "user": {"id": 1}})
        await h.settle()
        assert await ids(h, q="user.id=1 smtp") == {smtp, new}
    written = await _terms(db)
    assert {t for t, _ in written} >= {"e:order.paid", "d:user.id=1", "w:smtp", "w:declined"}
    # Indexing everything again from scratch gives exactly what was written.
    await _write(db, _before_the_index)
    assert await _terms(db) == written


async def _write(db: str, op: Any) -> None:
    storage = open_storage(db)
    await storage.open()
    try:
        await storage.write(op)
    finally:
        await storage.close()


def _before_the_index(tx: Any) -> None:
    """The database as it was before migration 20 (stored rows only; no index)."""
    for sql in ("DROP TABLE run_terms",
                "DELETE FROM schema_migrations WHERE version = 20",
                "DELETE FROM settings WHERE name = 'search_backfill_after'"):
        tx.conn.execute(sql)


async def _terms(db: str) -> set[tuple[str, str]]:
    storage = open_storage(db)
    await storage.open()
    try:
        rows = await storage.read(lambda tx: tx.raw_all("SELECT term, run_id FROM run_terms",
                                                        {}))
    finally:
        await storage.close()
    return {(r["term"], r["run_id"]) for r in rows}
