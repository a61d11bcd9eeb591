"""Live updates in a real Chromium against a real `stepwise dev`: the runs page and a run's
page change when the server says so (no request to the API while nothing changes), a hidden
tab makes no requests, and a page whose stream is refused polls every 2 seconds instead.

Screenshots: `test-artifacts/dashboard/live-*.png`."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.browser.conftest import Watched, shot

#: Each run's second step waits until the file its event names exists: a test decides when
#: a step finishes.
APP = textwrap.dedent('''
    import os
    import time

    import stepwise

    app = stepwise.App("gates")

    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        return "opened"

    @app.function(id="gated", trigger=stepwise.on_event("gate.open"), retries=0)
    def gated(ctx):
        ctx.step.run("first", lambda: 1)
        return ctx.step.run("through-the-gate", wait_for, ctx.event.data["gate"])
''')

#: Long enough for a poll every 2 s to show several times; shorter than live.js's 30 s resync.
QUIET_S = 6.0


class Gates:
    def __init__(self, base: str, tmp: Path) -> None:
        self.base = base
        self.tmp = tmp
        self.sent = 0

    def send(self) -> tuple[str, Path]:
        """A new run waiting at its gate: its event id and the gate to open."""
        self.sent += 1
        gate = self.tmp / f"gate-{self.sent}"
        ids = http("POST", self.base + "/api/v1/events",
                   {"name": "gate.open", "data": {"gate": str(gate)}})["ids"]
        return str(ids[0]), gate

    def run_of(self, event_id: str) -> dict[str, Any]:
        return dict(wait_until(lambda: http("GET", f"{self.base}/api/v1/events/{event_id}")
                               ["runs"], 30, "the event's run")[0])


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gates]:
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "gates_app.py").write_text(APP)
    port = free_port()
    proc = start(["dev", "gates_app:app", "--port", str(port), "--db", str(tmp / "live.db")],
                 cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield Gates(base, tmp)
    finally:
        stop(proc)


class Requests:
    """The API requests a page makes, by path, with when they were made."""

    def __init__(self, page: Any) -> None:
        self.seen: list[tuple[float, str]] = []
        page.on("request", lambda r: self.seen.append((time.monotonic(), r.url)))

    def since(self, began: float, path: str) -> int:
        return sum(1 for at, url in self.seen if at >= began and path in url)


def _streaming(page: Any) -> None:
    """Wait until the page's stream is open (its indicator says live, with the live title)."""
    page.wait_for_function("document.getElementById('live').title.startsWith('Live')",
                           timeout=10_000)


def test_the_runs_page_updates_when_told_and_makes_no_requests_meanwhile(
        gates: Gates, pages: Watched) -> None:
    page = pages.open()
    requests = Requests(page)
    page.goto(gates.base + "/runs")
    page.locator("#page table, #page .empty, #page p").first.wait_for()
    _streaming(page)
    page.wait_for_timeout(2500)  # the refreshes the opening asks for (coalesced per 2 s)

    quiet = time.monotonic()
    page.wait_for_timeout(QUIET_S * 1000)
    assert requests.since(quiet, "/api/v1/runs") == 0, requests.seen
    assert requests.since(quiet, "/api/v1/") == 0, requests.seen
    assert page.locator("#live").inner_text() == "live"

    sent = time.monotonic()
    event_id, gate = gates.send()
    run = gates.run_of(event_id)
    row = page.locator(f'#page a[href="/runs/{run["id"]}"]')
    row.wait_for(timeout=5_000)
    shown = time.monotonic() - sent
    refreshes = requests.since(sent, "/api/v1/runs")
    assert 1 <= refreshes <= 3, requests.seen  # coalesced: at most one per 2 s
    print(f"new run shown {shown:.2f} s after its event, with {refreshes} reads of the runs")
    shot(page, "live-runs")

    # The run's page: a step that finishes shows without polling too.
    row.click()
    page.locator('[data-step="first"]').first.wait_for()
    _streaming(page)
    page.wait_for_timeout(2500)  # the last coalesced refresh of the run starting
    quiet = time.monotonic()
    page.wait_for_timeout(2000)
    assert requests.since(quiet, f"/api/v1/runs/{run['id']}") == 0, requests.seen
    opened = time.monotonic()
    gate.touch()
    page.locator("h1 .badge.s-completed").wait_for(timeout=5_000)
    print(f"run page showed the run completed {time.monotonic() - opened:.2f} s after the gate")
    assert page.locator('[data-step="through-the-gate"]').count() >= 1
    shot(page, "live-run-completed")


def test_a_hidden_tab_makes_no_requests_and_catches_up_when_shown(
        gates: Gates, pages: Watched) -> None:
    page = pages.open()
    requests = Requests(page)
    page.goto(gates.base + "/runs")
    _streaming(page)
    page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    assert page.locator("#live").inner_text() == "paused"
    hidden = time.monotonic()
    event_id, gate = gates.send()
    run = gates.run_of(event_id)
    page.wait_for_timeout(3000)
    assert requests.since(hidden, "/api/v1/") == 0, requests.seen  # stream closed too
    assert page.locator(f'#page a[href="/runs/{run["id"]}"]').count() == 0
    page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.locator(f'#page a[href="/runs/{run["id"]}"]').wait_for(timeout=5_000)
    _streaming(page)
    gate.touch()
    # Hiding closed the stream on purpose; Chromium may report that request as failed.
    aborted = f"request failed: {gates.base}/api/v1/live"
    pages.problems[:] = [p for p in pages.problems if p != aborted]


def test_a_page_whose_stream_is_refused_polls_every_two_seconds(
        gates: Gates, pages: Watched) -> None:
    page = pages.open()
    page.route("**/api/v1/live", lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"error": "blocked by the test"}'))
    requests = Requests(page)
    page.goto(gates.base + "/runs")
    page.wait_for_function("document.getElementById('live').textContent === 'polling'",
                           timeout=10_000)
    assert "every 2 seconds" in (page.locator("#live").get_attribute("title") or "")
    began = time.monotonic()
    page.wait_for_timeout(QUIET_S * 1000)
    polls = requests.since(began, "/api/v1/runs")
    assert 2 <= polls <= 4, "\n".join(f"{a - began:.2f} {u[-40:]}" for a, u in requests.seen)
    event_id, gate = gates.send()
    run = gates.run_of(event_id)
    page.locator(f'#page a[href="/runs/{run["id"]}"]').wait_for(timeout=5_000)
    # Navigating keeps saying polling (app.js marks each new page live).
    page.click('header nav a[data-section="events"]')
    page.locator("#page table, #page .empty").first.wait_for()
    page.wait_for_timeout(200)
    assert page.locator("#live").inner_text() == "polling"
    gate.touch()
    shot(page, "live-polling")


def test_tabs_of_one_browser_share_one_stream(gates: Gates, browser: Any) -> None:
    """Over HTTP/1.1 a browser opens at most 6 connections to a server: eight tabs each
    holding a stream would leave the seventh unable to load. One tab holds the stream and
    tells the others; when it closes, another takes over."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    errors: list[str] = []
    streams: list[str] = []
    context.on("request", lambda r: streams.append(r.url) if "/api/v1/live" in r.url else None)
    try:
        tabs = []
        for _ in range(8):
            tab = context.new_page()
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(gates.base + "/runs", timeout=10_000)
            tab.locator("#page table, #page p").first.wait_for(timeout=10_000)
            tabs.append(tab)
        for tab in tabs:
            _streaming(tab)
        assert len(streams) == 1, streams
        event_id, gate = gates.send()
        run = gates.run_of(event_id)
        for tab in tabs:
            tab.locator(f'#page a[href="/runs/{run["id"]}"]').wait_for(timeout=5_000)
        tabs[0].close()  # the tab holding the stream (the first to ask for it)
        tabs[1].wait_for_timeout(1000)
        assert len(streams) == 2, streams  # another tab took it over
        gate.touch()
        for tab in tabs[1:]:
            tab.locator(f'#page tr:has(a[href="/runs/{run["id"]}"]) .badge.s-completed'
                        ).wait_for(timeout=5_000)
        shot(tabs[-1], "live-eighth-tab")
    finally:
        context.close()
    assert errors == []
