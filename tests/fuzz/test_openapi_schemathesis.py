"""Schemathesis against a live `stepwise dev`'s /openapi.json: no 5xx, every answer as
documented (status codes, JSON errors, response shapes), for generated valid and invalid input.

Driven through Hypothesis directly (schemathesis' pytest fixture loader does not work with
pytest 9): one test per operation and generation mode, a bounded number of examples each.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation import GenerationMode

sys.path.insert(0, str(Path(__file__).parents[1] / "acceptance"))
from procs import free_port, start, stop, wait_healthy

APP = '''
import stepwise

app = stepwise.App("fuzz")

@app.function(id="echo", trigger=stepwise.on_event("ping"))
async def echo(ctx):
    return await ctx.step.run("echo", lambda: ctx.event.data)
'''

#: Examples per operation and mode; STEPWISE_FUZZ_EXAMPLES raises it for a longer local run.
EXAMPLES = int(os.environ.get("STEPWISE_FUZZ_EXAMPLES", "40"))
CASES: list[int] = []


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    cwd = tmp_path_factory.mktemp("fuzz")
    (cwd / "fuzz_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "fuzz_app:app", "--port", str(port), "--db", str(cwd / "f.db")], cwd)
    try:
        wait_healthy(base, proc)
        yield base, schemathesis.openapi.from_url(base + "/openapi.json")
    finally:
        stop(proc)
    print(f"schemathesis: {sum(CASES)} requests")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_api_answers_as_documented(live: tuple[str, Any], mode: GenerationMode) -> None:
    base, schema = live
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            CASES.append(1)
            response = case.call(base_url=base)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert response.json()["error"], response.text
            # 413 (over a documented limit) is a rejection schemathesis does not count as one.
            over_limit = response.status_code == 413 and "limit" in response.json()["error"]
            case.validate_response(response, excluded_checks=[
                checks.negative_data_rejection, checks.positive_data_acceptance]
                if over_limit else None)

        try:
            check()
        except Unsatisfiable:
            # No invalid value exists for some operations (a path id may be any text).
            if mode is not GenerationMode.NEGATIVE:
                raise
        except BaseException as exc:
            exc.add_note(f"operation: {operation.label}")
            raise
