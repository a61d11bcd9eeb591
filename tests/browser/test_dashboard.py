"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a real `stepwise dev` process running `tests/browser/shop.py`.

Screenshots of every page are saved under `test-artifacts/dashboard/` (look at them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.browser.conftest import shot


class Shop:
    """A running `stepwise dev` of the shop app, and the switch that "deploys the fix"."""

    def __init__(self, base: str, fixed: Path) -> None:
        self.base = base
        self.fixed = fixed

    def fix(self, fixed: bool) -> None:
        if fixed:
            self.fixed.touch()
        else:
            self.fixed.unlink(missing_ok=True)

    def send(self, data: dict[str, Any]) -> str:
        return str(http("POST", self.base + "/api/v1/events",
                        {"name": "order.placed", "data": data})["ids"][0])

    def runs(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return list(http("GET", f"{self.base}/api/v1/runs?limit=1000&{query}")["runs"])

    def checkout_of(self, event_id: str) -> dict[str, Any]:
        runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
        return next(r for r in runs if r["function_id"] == "checkout")

    def wait_status(self, event_id: str, status: str) -> dict[str, Any]:
        return dict(wait_until(lambda: (run := self.checkout_of(event_id))["status"] == status
                               and run, 30, f"checkout of {event_id} {status}"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    proc = start(["dev", "tests.browser.shop:app", "--port", str(port), "--db",
                  str(tmp / "shop.db")], cwd=tmp,
                 env={"STEPWISE_TEST_FIXED": str(tmp / "fixed"), "PYTHONPATH": str(root)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield Shop(base, tmp / "fixed")
    finally:
        stop(proc)


def test_open_a_failed_run_by_url_read_its_trace_replay_it_and_watch_it_complete(
        shop: Shop, page: Any) -> None:
    shop.fix(False)
    event_id = shop.send({"order": "A-1"})
    run = shop.wait_status(event_id, "failed")
    page.goto(f"{shop.base}/runs/{run['id']}")
    trace = page.locator("#run-error pre.stack")
    trace.wait_for()
    lines = trace.inner_text().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert any('shop.py", line' in line and "charge_card" in line for line in lines)
    assert lines[-1].startswith("stepwise.errors.NonRetriableError: card processor answered")
    assert "\\n" not in trace.inner_text()  # real lines, not JSON escapes
    assert page.locator("#run-error .error-title").inner_text().startswith(
        "NonRetriableError: card processor answered 'declined'")
    # The timeline shows the retried fraud check (one failed attempt, then success) and the
    # charge's failure; the log lines and the event are on the page.
    fraud = page.locator('#timeline [data-step="fraud-check"]')
    assert fraud.locator(".tl-bar.failed").count() == 1
    assert fraud.locator(".tl-bar.completed").count() == 1
    assert page.locator('#timeline [data-step="charge-card"] .tl-bar.failed').count() == 1
    assert "checking out order A-1" in page.locator("#logs").inner_text()
    assert json.loads(page.locator("#event-data").inner_text()) == {"order": "A-1"}
    assert page.get_by_text("on_failure handler").count() == 1
    # Only what the status allows is offered.
    assert page.locator("#replay").is_visible() and page.locator("#cancel").count() == 0
    shot(page, "run-failed")

    shop.fix(True)
    page.evaluate("window.notReloaded = true")
    page.click("#replay")
    page.locator("h1 .badge.s-completed").wait_for(timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#replay").count() == 0 and page.locator("#rerun").is_visible()
    assert json.loads(page.locator("#output").inner_text())["parcel"] == "P-A-1"
    assert shop.checkout_of(event_id)["status"] == "completed"
    shot(page, "run-replayed")


def test_bulk_replay_of_a_filtered_failed_list(shop: Shop, page: Any) -> None:
    shop.fix(False)
    batch = [shop.send({"order": f"B-{n}", "batch": "nightly"}) for n in range(3)]
    other = shop.send({"order": "C-1", "batch": "manual"})
    for event_id in [*batch, other]:
        shop.wait_status(event_id, "failed")
    page.goto(f"{shop.base}/failed?function=checkout&event_data=batch%3Dnightly")
    page.locator("#runs tbody tr").first.wait_for()
    assert page.locator("#runs tbody tr").count() == 3
    assert page.locator('select[name="function"]').input_value() == "checkout"
    shot(page, "failed-filtered")

    shop.fix(True)
    page.click("#bulk-replay")
    dialog = page.locator("#confirm")
    dialog.wait_for(state="visible")
    assert "Replay 3 failed, cancelled or skipped runs" in dialog.inner_text()
    shot(page, "failed-confirm")
    page.click("#confirm-yes")
    page.get_by_text("Replayed 3 runs.").wait_for()
    page.get_by_text("No runs match.").wait_for(timeout=30_000)  # the list updates itself
    for event_id in batch:
        assert shop.wait_status(event_id, "completed")["attempts"] == 2
    assert shop.checkout_of(other)["status"] == "failed"  # outside the filter: untouched


def test_send_a_test_event_from_the_events_page_and_see_its_runs(
        shop: Shop, page: Any) -> None:
    shop.fix(True)
    page.goto(f"{shop.base}/events")
    page.fill('#send input[name="name"]', "order.placed")
    page.fill('#send textarea[name="data"]', '{"order": "T-1"}')
    page.click('#send button')
    page.wait_for_url(f"{shop.base}/events/*")
    event_id = page.url.rsplit("/", 1)[1]
    rows = page.locator("#event-runs tbody tr")
    rows.first.wait_for()
    page.locator("#event-runs .badge.s-completed").nth(1).wait_for(timeout=30_000)
    assert sorted(page.locator("#event-runs td.mono").all_inner_texts()) == [
        "checkout", "send-receipt"]
    assert json.loads(page.locator("#event-data").inner_text()) == {"order": "T-1"}
    shot(page, "event")
    page.click("#again")
    page.wait_for_url(lambda url: url.startswith(f"{shop.base}/events/")
                      and not url.endswith(event_id))
    assert json.loads(page.locator("#event-data").inner_text()) == {"order": "T-1"}
    bad = page.goto(f"{shop.base}/events")
    assert bad is not None and bad.ok
    page.fill('#send input[name="name"]', "order.placed")
    page.fill('#send textarea[name="data"]', "{not json")
    page.click('#send button')
    assert "Data is not JSON" in page.locator("#send .notice.bad").inner_text()
    shot(page, "events")


def test_runs_functions_and_workers_pages(shop: Shop, page: Any) -> None:
    shop.fix(True)
    shop.wait_status(shop.send({"order": "D-1"}), "completed")
    page.goto(f"{shop.base}/runs")
    page.locator("#runs tbody tr").first.wait_for()
    assert page.locator("header nav a.active").inner_text() == "Runs"
    page.select_option('select[name="function"]', "send-receipt")
    page.click("#filters button")
    page.wait_for_url("**/runs?function=send-receipt")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#runs tbody tr td:nth-child(2)')]"
        ".every(td => td.textContent === 'send-receipt')")
    shot(page, "runs")

    page.click("header nav >> text=Functions")
    page.wait_for_url("**/functions")
    card = page.locator('[data-function="checkout"]')
    card.wait_for()
    assert "event order.placed" in card.inner_text()
    assert "on_failure checkout-failure" in card.inner_text()
    card.locator("canvas").first.wait_for()
    assert page.locator(".fn canvas").count() >= 2 * page.locator(".fn").count()
    completed = int(card.locator(".counts b").first.inner_text())
    assert completed >= 1
    assert page.locator("#retention").inner_text() == (
        "Finished runs are kept 30 days after they end, failed runs 90 days; 1 function has "
        "its own (shown on it).")
    assert "kept 1 week (failed 90 days)" in \
        page.locator('[data-function="send-receipt"]').inner_text()
    assert "kept" not in card.inner_text()
    shot(page, "functions")

    page.click("header nav >> text=Workers")
    row = page.locator("#worker-list tbody tr").first
    row.wait_for()
    text = row.inner_text()
    assert "live" in text and "checkout, checkout-failure, pack-parcel, send-receipt" in text
    assert page.locator("#warning").is_hidden()
    shot(page, "workers")

    missing = page.goto(f"{shop.base}/runs/no-such-run")
    assert missing is not None and missing.ok  # the page loads and says what is wrong
    page.get_by_text("run no-such-run not found").wait_for()
