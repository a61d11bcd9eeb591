"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a real `stepwise dev` process running `tests/browser/shop.py`.

Screenshots of every page are saved under `test-artifacts/dashboard/` (look at them)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.browser.conftest import Shop, Watched, shot


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
    assert "live" in text and ("checkout, checkout-failure, pack-parcel, post-ledger, "
                               "send-receipt") in text
    assert page.locator("#warning").is_hidden()
    shot(page, "workers")

    missing = page.goto(f"{shop.base}/runs/no-such-run")
    assert missing is not None and missing.ok  # the page loads and says what is wrong
    page.get_by_text("run no-such-run not found").wait_for()


#: Times are shown in the browser's zone with its offset: one without summer time.
ZONE, OFFSET = "Asia/Tokyo", timezone(timedelta(hours=9))


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"))


def test_a_failed_run_with_an_error_over_1_kib_is_listed_by_its_title_with_dated_times(
        shop: Shop, pages: Watched) -> None:
    message = 'ledger said "no" → batch 7 refused: ' + "0123456789" * 297  # 3,006 characters
    run = shop.failed_ledger_post(message)
    listed = next(r for r in shop.runs(status="failed", function="post-ledger")
                  if r["id"] == run["id"])
    assert listed["error"] is None and listed["error_truncated"] is True
    page = pages.open(timezone_id=ZONE)
    page.goto(f"{shop.base}/failed?function=post-ledger")
    row = page.locator(f'#runs tr[data-id="{run["id"]}"]')
    row.wait_for()
    error = row.locator("td").last.inner_text()  # the error column
    assert error.startswith('NonRetriableError: ledger said "no" → batch 7 refused: 0123456789')
    assert error.endswith("…")
    # Lists say how long ago; the exact day, time and zone are on hover.
    created = row.locator("time")
    assert re.fullmatch(r"just now|\d+ (s|min) ago", created.inner_text())
    when = datetime.fromisoformat(run["created_at"]).astimezone(OFFSET)
    assert created.get_attribute("title") == (
        f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d} UTC+09:00 ({ZONE})")
    shot(page, "failed-long-error")
    # The run's own page: the whole error, and exact times with their day and zone.
    row.locator("a").first.click()
    page.locator("#run-error .error-title").wait_for()
    assert message in page.locator("#run-error .error-title").inner_text()
    facts = page.locator(".facts").inner_text()
    assert f"{when:%Y-%m-%d %H:%M:%S} UTC+09:00" in facts


def test_a_long_unbroken_error_wraps_and_the_pages_fit_a_phone(
        shop: Shop, pages: Watched) -> None:
    unbroken = "E" + "0123456789" * 30  # 301 characters, no space
    run = shop.failed_ledger_post(unbroken)
    page = pages.open(viewport={"width": 1366, "height": 768})
    page.goto(f"{shop.base}/runs/{run['id']}")
    page.locator("#run-error .error-title").wait_for()
    page.locator('#steps [data-step="post"] .error-title').wait_for()
    assert no_horizontal_scroll(page), page.evaluate("document.documentElement.scrollWidth")
    shot(page, "run-unbroken-error-1366")

    phone = pages.open(viewport={"width": 390, "height": 844})
    for path, ready, name in ((f"/runs/{run['id']}", "#run-error .error-title", "run-390"),
                              ("/failed", "#runs tbody tr", "failed-390"),
                              ("/functions", ".fn canvas", "functions-390")):
        phone.goto(shop.base + path)
        phone.locator(ready).first.wait_for()
        assert no_horizontal_scroll(phone), (path, phone.evaluate(
            "document.documentElement.scrollWidth"))
        header = phone.locator("header").bounding_box()
        for link in phone.locator("header nav a").all():
            box = link.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (path, box)
            assert box["y"] + box["height"] <= header["y"] + header["height"], (path, box)
        shot(phone, name)
    # Rows are stacked cards there: an error gets the screen's width, not a sliver of it.
    phone.goto(f"{shop.base}/failed?function=post-ledger")
    cell = phone.locator(f'#runs tr[data-id="{run["id"]}"] td.error-cell')
    cell.wait_for()
    assert cell.bounding_box()["width"] > 300
    phone.goto(f"{shop.base}/runs/{run['id']}")
    step_error = phone.locator('#steps [data-step="post"] .error-title')
    step_error.wait_for()
    assert step_error.bounding_box()["width"] > 300


def test_an_unknown_address_shows_the_dashboards_not_found_page(
        shop: Shop, pages: Watched) -> None:
    page = pages.open()
    pages.expect(404, f"{shop.base}/no/such/page")
    answer = page.goto(f"{shop.base}/no/such/page")
    assert answer is not None and answer.status == 404
    view = page.locator("#not-found")
    view.wait_for()
    assert view.locator("h1").inner_text() == "Page not found"
    assert "/no/such/page" in view.inner_text()
    assert page.locator("header nav a").count() == 7  # in the dashboard's own frame
    shot(page, "not-found")
    page.click("#back-to-runs")
    page.wait_for_url(f"{shop.base}/runs")
    page.locator("#runs tbody tr").first.wait_for()
    api = http_status(f"{shop.base}/api/v1/no-such-thing")
    assert api == (404, {"error": "Not Found"})


def http_status(url: str) -> tuple[int, Any]:
    """A GET's status and JSON body, as a browser would send it (Accept: text/html)."""
    request = urllib.request.Request(url, headers={"Accept": "text/html,*/*;q=0.8"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def step_of(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["id"] == step_id)


def width(locator: Any) -> float:
    return float(locator.bounding_box()["width"])


def test_a_step_that_failed_twice_then_succeeded_lists_its_three_attempts(
        shop: Shop, pages: Watched) -> None:
    page = pages.open(viewport={"width": 1366, "height": 768})
    event_id = shop.emit("stock.count", {"shelf": "A3"})
    run = shop.wait_detail(event_id, "stock-count", lambda r: r["status"] == "completed",
                           "completed")
    assert [f["attempt"] for f in run["failures"]] == [1, 2]
    page.goto(f"{shop.base}/runs/{run['id']}")
    step = page.locator('#steps [data-step="count-shelf"]')
    step.locator('tr.attempt[data-attempt="3"]').wait_for()
    assert [a.get_attribute("data-attempt") for a in step.locator("tr.attempt").all()] == [
        "1", "2", "3"]
    # Each failed attempt: its result, start, end and duration, its error's title and its
    # stack trace as lines.
    for n, title in ((1, "ConnectionResetError: shelf scanner reset the connection"),
                     (2, "TimeoutError: shelf scanner did not answer in 5 s")):
        failure = run["failures"][n - 1]
        row = step.locator(f'tr.attempt[data-attempt="{n}"]')
        assert row.locator(".badge").inner_text() == "failed"
        times = [t.get_attribute("datetime") for t in row.locator("time").all()]
        assert times == [failure["started_at"], failure["ended_at"]]
        took = datetime.fromisoformat(failure["ended_at"]) - datetime.fromisoformat(
            failure["started_at"])
        assert row.locator("td.took").inner_text() == (
            f"{round(took / timedelta(milliseconds=1))} ms")
        detail = step.locator(f'[data-attempt-detail="{n}"]')
        assert detail.locator(".error-title").inner_text() == title
        lines = detail.locator("pre.stack").inner_text().splitlines()
        assert lines[0] == "Traceback (most recent call last):"
        assert any('shop.py", line' in line and "read_shelf_scanner" in line for line in lines)
        assert lines[-1] == title
    # The third succeeded: its end and its output.
    third = step.locator('tr.attempt[data-attempt="3"]')
    assert third.locator(".badge").inner_text() == "completed"
    counted = step_of(run, "count-shelf")
    assert [t.get_attribute("datetime") for t in third.locator("time").all()] == [
        counted["attempt_started_at"], counted["ended_at"]]
    assert json.loads(step.locator('[data-attempt-detail="3"] pre.output').inner_text()) == {
        "shelf": "A3", "count": 17}
    # The backoff waits between the attempts are rows of their own, not attempts (the
    # third's own start is stored, so the wait before it is its own too).
    waits = step.locator("tr.wait").all_inner_texts()
    assert len(waits) == 2
    for n, wait in ((2, waits[0]), (3, waits[1])):
        assert re.fullmatch(rf"Retry wait: [\d.]+ m?s before attempt {n}\.", wait), waits
    # The timeline: two failed attempts, the waits after them, the attempt that succeeded.
    row = page.locator('#timeline [data-step="count-shelf"]')
    assert row.locator(".tl-bar.failed").count() == 2
    assert row.locator(".tl-wait").count() == 2
    assert row.locator(".tl-bar.completed").count() == 1
    assert row.locator(".tl-dur").inner_text().startswith("2 failed")
    assert "?" not in row.locator(".tl-dur").inner_text()  # every attempt's time is known
    shot(page, "run-attempts")
    # On a phone: each attempt a card, the stack traces wrapped, no sideways scrolling.
    phone = pages.open(viewport={"width": 390, "height": 844})
    phone.goto(f"{shop.base}/runs/{run['id']}")
    phone.locator('#steps [data-attempt-detail="3"] pre.output').wait_for()
    assert no_horizontal_scroll(phone), phone.evaluate("document.documentElement.scrollWidth")
    shot(phone, "run-attempts-390")


def test_a_step_retried_in_30_minutes_is_a_wait_and_the_run_says_it_waits_to_retry(
        shop: Shop, page: Any) -> None:
    event_id = shop.emit("supplier.sync", {})
    run = shop.wait_detail(event_id, "supplier-sync",
                           lambda r: r["status"] == "queued" and r["failures"] != [],
                           "parked to retry")
    assert run["waiting_to_retry"] is True and run["steps"][0]["status"] == "retrying"
    due = step_of(run, "call-supplier")["ended_at"]
    # The runs list says so too, not "queued".
    page.goto(f"{shop.base}/runs?function=supplier-sync")
    listed = page.locator(f'#runs tr[data-id="{run["id"]}"] .badge')
    listed.wait_for()
    assert listed.inner_text() == "waiting to retry"
    shot(page, "runs-waiting-to-retry")
    page.goto(f"{shop.base}/runs/{run['id']}")
    badge = page.locator("h1 .badge.s-retrying")
    badge.wait_for()
    assert badge.inner_text() == "waiting to retry"
    assert page.locator("#retry-due time").get_attribute("datetime") == due
    assert page.locator("#wake").inner_text() == "Retry now"
    # The timeline: one failed attempt, then a wait of 30 minutes (not a green bar, not
    # "took 30 min"); the attempt's own time is what "took" says.
    row = page.locator('#timeline [data-step="call-supplier"]')
    assert row.locator(".tl-bar.failed").count() == 1
    assert row.locator(".tl-bar.completed").count() == 0
    wait = row.locator(".tl-wait.pending")
    assert "retry wait" in (wait.get_attribute("title") or "")
    assert width(wait) > 0.9 * width(row.locator(".tl-track"))
    took = row.locator(".tl-dur").inner_text()
    assert took.startswith("1 failed") and "min" not in took
    step = page.locator('#steps [data-step="call-supplier"]')
    assert step.locator(".step-head .badge").inner_text() == "retrying"
    assert "attempt 2 due" in step.locator("tr.wait.pending").inner_text()
    shot(page, "run-waiting-to-retry")

    # Retried now: attempt 2 fails the same way; the first wait ended when it began.
    page.click("#wake")
    step.locator('tr.attempt[data-attempt="2"]').wait_for()
    assert row.locator(".tl-bar.failed").count() == 2
    assert row.locator(".tl-wait").count() == 2 and row.locator(".tl-wait.pending").count() == 1
    # Cancelled: the step's pending retry is cancelled too; the wait ends with the run.
    page.click("#cancel")
    page.click("#confirm-yes")
    page.locator("h1 .badge.s-cancelled").wait_for()
    assert step.locator(".step-head .badge").inner_text() == "cancelled"
    assert row.locator(".tl-wait.pending").count() == 0
    span = page.locator("#timeline .tl-axis span").last.inner_text()
    assert re.fullmatch(r"\+[\d.]+ (ms|s)", span), span
    shot(page, "run-retry-cancelled")


def test_a_cancelled_runs_sleeping_step_shows_cancelled(shop: Shop, page: Any) -> None:
    event_id = shop.emit("trial.started", {"user": "u-7"})
    run = shop.wait_detail(event_id, "trial-drip", lambda r: r["status"] == "sleeping",
                           "sleeping")
    page.goto(f"{shop.base}/runs/{run['id']}")
    step = page.locator('#steps [data-step="wait-a-week"]')
    step.locator(".step-head .badge.s-sleeping").wait_for()
    wake = step_of(run, "wait-a-week")["ended_at"]
    assert step.locator("tr.period time").last.get_attribute("datetime") == wake
    shot(page, "run-sleeping")
    page.click("#cancel")
    page.click("#confirm-yes")
    page.locator("h1 .badge.s-cancelled").wait_for()
    assert shop.detail(run["id"])["steps"][1]["status"] == "sleeping"  # as stored
    assert step.locator(".step-head .badge").inner_text() == "cancelled"
    assert "Cancelled with the run; it was due" in step.locator("tr.detail").inner_text()
    # Its bar ends when the run was cancelled: no week-long bar.
    bar = page.locator('#timeline [data-step="wait-a-week"] .tl-bar')
    assert bar.get_attribute("class") == "tl-bar cancelled"
    span = page.locator("#timeline .tl-axis span").last.inner_text()
    assert re.fullmatch(r"\+[\d.]+ (ms|s)", span), span
    shot(page, "run-sleep-cancelled")
