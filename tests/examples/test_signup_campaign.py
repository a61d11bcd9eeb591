"""The signup example's drip campaign, days of it in milliseconds, through the pytest plugin's
`stepwise_harness` fixture (a user's tests look like this)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stepwise
from examples import signup
from stepwise.testing import SyncHarness

SIGNUP = {"user_id": 42, "email": "ada@example.com"}


@pytest.fixture
def stepwise_app() -> Iterator[stepwise.App]:
    signup._list_attempts.clear()
    yield signup.app


def test_a_booking_within_the_week_gets_booking_tips(stepwise_harness: SyncHarness) -> None:
    h = stepwise_harness
    signed_up = h.send("user.signup", SIGNUP)
    h.settle()
    drip = h.run_for(signed_up, "drip-campaign")
    assert drip["status"] == "sleeping"
    assert h.run_for(signed_up, "send-welcome-email")["status"] == "completed"
    h.advance(days=3, hours=23)
    assert h.run(drip["id"])["status"] == "sleeping"  # not yet 4 days
    h.advance(hours=1)
    assert h.run(drip["id"])["status"] == "waiting"  # for the first booking
    h.send("booking.created", {"user_id": 7, "booking_id": "someone-else"})
    h.settle()
    assert h.run(drip["id"])["status"] == "waiting"  # another user's booking does not match
    h.send("booking.created", {"user_id": 42, "booking_id": "b-1"})
    h.settle()
    done = h.run(drip["id"])
    assert done["status"] == "completed"
    assert done["output"] == {"branch": "booked", "booking": "b-1"}
    assert h.step(drip["id"], "booking-tips")["output"]["subject"] == (
        "Getting the most from booking b-1")


def test_no_booking_in_three_days_gets_a_nudge(stepwise_harness: SyncHarness) -> None:
    h = stepwise_harness
    signed_up = h.send("user.signup", SIGNUP)
    h.settle()
    h.advance(days=4)
    drip = h.run_for(signed_up, "drip-campaign")
    assert drip["status"] == "waiting"
    h.advance(days=3)
    done = h.run(drip["id"])
    assert done["status"] == "completed" and done["output"] == {"branch": "nudged"}
    assert [s["id"] for s in done["steps"]] == ["wait-4-days", "first-booking", "nudge"]


def test_the_flaky_mailing_list_retries_when_the_clock_moves(
        stepwise_harness: SyncHarness) -> None:
    h = stepwise_harness
    signed_up = h.send("user.signup", SIGNUP)
    h.settle()
    listing = h.run_for(signed_up, "add-to-mailing-list")
    assert listing["status"] == "queued" and listing["failed_attempts"] == 1  # backing off
    h.advance(minutes=1)  # past both backoffs (2-4 s, then 4-8 s)
    h.advance(minutes=1)
    listing = h.run(listing["id"])
    assert listing["status"] == "completed" and listing["steps"][0]["attempts"] == 3


async def test_the_fixture_works_in_async_tests_too(stepwise_harness: SyncHarness) -> None:
    signed_up = stepwise_harness.send("user.signup", SIGNUP)
    stepwise_harness.settle(advance=True)  # jump through the whole campaign
    drip = stepwise_harness.run_for(signed_up, "drip-campaign")
    assert drip["output"] == {"branch": "nudged"}


def test_the_plugin_works_in_a_project_with_nothing_else(pytester: pytest.Pytester) -> None:
    """A user's project: no conftest, no asyncio plugin, only the app and a test."""
    pytester.makepyfile(shop="""
        import stepwise
        app = stepwise.App("shop")

        @app.function(id="greet", trigger=stepwise.on_event("hello"))
        def greet(ctx):
            return ctx.step.run("say", lambda: "hi " + ctx.event.data["name"])
    """)
    pytester.makepyfile(test_shop="""
        import pytest
        import shop

        @pytest.fixture
        def stepwise_app():
            return shop.app

        def test_greets(stepwise_harness):
            event_id = stepwise_harness.send("hello", {"name": "ada"})
            stepwise_harness.settle()
            assert stepwise_harness.run_for(event_id, "greet")["output"] == "hi ada"
    """)
    pytester.makepyfile(test_forgot_app="""
        def test_uses_the_harness(stepwise_harness):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named stepwise_app*"])
