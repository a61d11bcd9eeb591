"""Browser tests: Debian's /usr/bin/chromium driven by Playwright. Screenshots go to
`test-artifacts/dashboard/` (look at them). `shop`: a real `stepwise dev` of
`tests/browser/shop.py`, one per test module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until

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
        return self.run_of(event_id, "checkout")

    def run_of(self, event_id: str, function_id: str) -> dict[str, Any]:
        runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
        return next(r for r in runs if r["function_id"] == function_id)

    def failed_ledger_post(self, message: str) -> dict[str, Any]:
        """A run of post-ledger failed with `message`."""
        event_id = str(http("POST", self.base + "/api/v1/events",
                            {"name": "ledger.post", "data": {"message": message}})["ids"][0])
        return dict(wait_until(lambda: (run := self.run_of(event_id, "post-ledger"))["status"]
                               == "failed" and run, 30, "post-ledger failed"))

    def emit(self, name: str, data: dict[str, Any]) -> str:
        """Send one event; its id."""
        return str(http("POST", self.base + "/api/v1/events",
                        {"name": name, "data": data})["ids"][0])

    def detail(self, run_id: str) -> dict[str, Any]:
        return dict(http("GET", f"{self.base}/api/v1/runs/{run_id}"))

    def wait_detail(self, event_id: str, function_id: str,
                    ready: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The run of `function_id` that `event_id` started, once `ready` holds for its
        detail."""
        def found() -> dict[str, Any] | None:
            run = self.detail(self.run_of(event_id, function_id)["id"])
            return run if ready(run) else None
        return dict(wait_until(found, 30, f"{function_id}: {what}"))

    def wait_status(self, event_id: str, status: str) -> dict[str, Any]:
        return dict(wait_until(lambda: (run := self.checkout_of(event_id))["status"] == status
                               and run, 30, f"checkout of {event_id} {status}"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("shop")
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
