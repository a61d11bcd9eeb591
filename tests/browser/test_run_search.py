"""The runs search in a real headless Chromium against a real `stepwise dev` of the shop app
(tests/browser/shop.py): by an error's words on the Runs and Failed pages, by a field of the
event's data, the count of matches and paging past 50, and a search the server refuses (over
16 words).

Screenshots: test-artifacts/dashboard/search-*.png (look at them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.acceptance.procs import http, wait_until
from tests.browser.conftest import Shop, shot


def search(page: Any, words: str) -> None:
    """Type `words` in the search box and press Enter, as an operator would."""
    page.fill("#search", words)
    page.press("#search", "Enter")
    page.wait_for_url(f"**q={quote(words, safe='').replace('%20', '+')}*")


def listed(page: Any) -> list[str]:
    """The listed runs' ids, read in one go: row by row, a live refresh that redraws the
    table between the count and the reads left a read waiting 30 s for a row that was gone."""
    page.locator("#count").wait_for()
    return list(page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.id)"))


def test_search_by_an_error_word_on_the_runs_and_failed_pages(shop: Shop, page: Any) -> None:
    unreachable = shop.failed_ledger_post("ledger down: vendor 4411 unreachable since 02:00")
    closed = shop.failed_ledger_post("ledger closed for the night")
    shop.failed_ledger_post("batch 7 refused by the ledger")

    page.goto(f"{shop.base}/runs")
    page.locator("#runs tbody tr").first.wait_for()
    search(page, "unreachable")
    wait_until(lambda: listed(page) == [unreachable["id"]], 10, "one run listed")
    assert page.locator("#count").inner_text() == "1 run matches"
    assert "unreachable" in page.locator("#runs tbody tr").first.inner_text()
    shot(page, "search-error-word")

    page.goto(f"{shop.base}/failed")
    search(page, "LEDGER closed")  # any case; every word must match
    wait_until(lambda: listed(page) == [closed["id"]], 10, "one failed run listed")
    assert page.locator("#search").input_value() == "LEDGER closed"
    shot(page, "search-failed-page")
    search(page, "ledger")
    wait_until(lambda: len(listed(page)) == 3, 10, "the three ledger failures")
    assert page.locator("#count").inner_text() == "3 runs match"


def test_search_by_an_event_field_counts_and_pages_the_matches(shop: Shop, page: Any) -> None:
    shop.fix(True)
    ada = shop.send({"order": "A-1", "customer": {"email": "ada@example.com", "tier": "gold"}})
    shop.send({"order": "G-1", "customer": {"email": "grace@example.com", "tier": "gold"}})
    wait_until(lambda: len(shop.runs(event_id=ada)) == 2, 30, "checkout and send-receipt")

    page.goto(f"{shop.base}/runs")
    search(page, "customer.email=ada@example.com")
    wait_until(lambda: len(listed(page)) == 2, 10, "the two runs of Ada's order")
    assert sorted(page.locator("#runs tbody td.mono").all_inner_texts()) == [
        "checkout", "send-receipt"]
    assert page.locator("#count").inner_text() == "2 runs match"
    shot(page, "search-event-field")
    search(page, "customer.tier=gold checkout")  # a field and a function, both
    wait_until(lambda: len(listed(page)) == 2, 10, "two gold checkouts")
    assert set(page.locator("#runs tbody td.mono").all_inner_texts()) == {"checkout"}

    # Past one page: 60 runs of one batch, counted and paged 50 at a time.
    http("POST", shop.base + "/api/v1/events",
         [{"name": "ledger.post", "data": {"message": f"night batch {n} refused",
                                           "batch": "night-60"}} for n in range(60)])
    wait_until(lambda: len(shop.runs(status="failed", event_name="ledger.post")) >= 60, 60,
               "the batch failed")
    page.goto(f"{shop.base}/failed")
    search(page, "batch=night-60")
    wait_until(lambda: len(listed(page)) == 50, 10, "a page of 50")
    assert page.locator("#count").inner_text() == "60 runs match · 1\u201350 shown, newest first"
    shot(page, "search-paged")
    first_page = listed(page)
    page.click("#older")
    wait_until(lambda: len(listed(page)) == 10, 10, "the other 10")
    assert page.locator("#count").inner_text() == "60 runs match · 51\u201360 shown, newest first"
    assert not set(listed(page)) & set(first_page)


def test_a_search_the_server_refuses_says_why_and_can_be_fixed(shop: Shop, page: Any) -> None:
    page.goto(f"{shop.base}/runs")
    page.fill("#search", " ".join(f"word{i}" for i in range(17)))  # over 16 words
    page.press("#search", "Enter")
    error = page.locator("#search-error")
    error.wait_for()
    assert error.inner_text() == "A search takes at most 16 words, separated by spaces."
    shot(page, "search-refused")
    search(page, 'customer.email="nobody@example.com')  # a quote left open: closed at the end
    page.get_by_text("No runs match.").wait_for()
    assert page.locator("#count").inner_text() == "0 runs match"
