"""The pytest plugin (entry point `pytest11`, installed with the package): tests get an
in-process engine on a temporary SQLite file and a manual clock, with nothing to set up.

    @pytest.fixture
    def stepwise_app():
        return my_project.app            # the stepwise.App under test

    def test_drip(stepwise_harness):
        event_id = stepwise_harness.send("user.signup", {"user_id": 1})
        stepwise_harness.settle()
        stepwise_harness.advance(days=4)
        assert stepwise_harness.run_for(event_id, "drip")["status"] == "completed"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .app import App
from .testing import SyncHarness


@pytest.fixture
def stepwise_app() -> App:
    """Override this fixture (in a conftest.py or a test module) to return your App."""
    raise pytest.UsageError("the stepwise_harness fixture needs your app: define a fixture "
                            "named stepwise_app that returns your stepwise.App")


@pytest.fixture
def stepwise_harness(stepwise_app: App, tmp_path: Path) -> Iterator[SyncHarness]:
    """The app's functions running in-process on a fresh SQLite file, on a manual clock."""
    if not isinstance(stepwise_app, App):
        raise pytest.UsageError(f"stepwise_app must return a stepwise.App, got "
                                f"{type(stepwise_app).__name__}")
    with SyncHarness(stepwise_app, f"sqlite:///{tmp_path / 'stepwise.db'}") as harness:
        yield harness
