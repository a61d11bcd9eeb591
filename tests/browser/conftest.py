"""Browser tests: Debian's /usr/bin/chromium driven by Playwright. Screenshots go to
`test-artifacts/dashboard/` (look at them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


def _need(thing: str, problem: str | None) -> None:
    """Skip locally when the browser is missing; in CI (CI=true) fail instead."""
    if problem is None:
        return
    message = f"{thing} unavailable: {problem} (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _need("playwright", str(exc))
    _need("chromium", None if shutil.which(CHROMIUM) else f"{CHROMIUM} not found")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Watched:
    """Opens pages that fail the test on any script error, or any failed request but the
    API's own 4xx answers (which the page shows) and the statuses a test expects."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.problems: list[str] = []
        self.pages: list[Any] = []
        self.expected: set[tuple[int, str]] = set()
        self.elsewhere: list[str] = []

    def open(self, **options: Any) -> Any:
        """A new page (in a context of its own: `viewport`, `timezone_id`, ...)."""
        page = self.browser.new_page(**{"viewport": {"width": 1400, "height": 1000},
                                        **options})
        problems = self.problems
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on("console", lambda m: problems.append(f"console: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text else None)
        # A request the page itself dropped (it navigated away, or closed a stream) is not a
        # failure; one to a site the test does not check (another server's page) neither.
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}")
                if r.failure != "net::ERR_ABORTED"
                and not r.url.startswith(tuple(self.elsewhere)) else None)
        page.on("response", lambda r: problems.append(f"{r.status}: {r.url}")
                if r.status >= 400 and "/api/v1/" not in r.url
                and not any(r.status == status and r.url.startswith(url)
                            for status, url in self.expected) else None)
        self.pages.append(page)
        return page

    def not_mine(self, prefix: str) -> None:
        """Requests to URLs under `prefix` (another program's pages) may fail."""
        self.elsewhere.append(prefix)

    def expect(self, status: int, url: str) -> None:
        """Let `url` (and the URLs it is a prefix of) answer `status` without failing the
        test."""
        self.expected.add((status, url))


@pytest.fixture
def pages(browser: Any) -> Iterator[Watched]:
    watched = Watched(browser)
    yield watched
    for page in watched.pages:
        page.close()
    assert watched.problems == [], "\n".join(watched.problems)


@pytest.fixture
def page(pages: Watched) -> Any:
    """A watched page, 1400x1000 (see `Watched`)."""
    return pages.open()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


