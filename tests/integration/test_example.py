"""The example app in examples/signup/ behaves as its docstring says."""

from __future__ import annotations

from examples import signup
from stepwise.testing import Harness


async def test_signup_fans_out_and_flaky_list_succeeds_on_third_attempt(db: str) -> None:
    signup._list_attempts.clear()
    async with Harness(signup.app, db) as h:
        event_id = await h.send("user.signup", {"user_id": 42, "email": "ada@example.com"})
        await h.settle()
        welcome = await h.run_for(event_id, "send-welcome-email")
        listing = await h.run_for(event_id, "add-to-mailing-list")
    assert welcome["status"] == "completed" and welcome["output"] == {"email": "sent"}
    assert listing["status"] == "completed" and listing["output"] == {"subscribed": "newsletter"}
    assert [(s["id"], s["attempts"]) for s in listing["steps"]] == [("subscribe", 3)]
    assert signup._list_attempts == {"ada@example.com": 3}
