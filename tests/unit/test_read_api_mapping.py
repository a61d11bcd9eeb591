"""The read API's mapping of stepwise's rows onto Inngest's names (server/gql.py), where it
is a decision of its own: display names, statuses, output ids, cron items. The queries
themselves are tested against real SDK apps in tests/sdk/test_gql.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from graphql import GraphQLError

from stepwise.server import gql


def step(step_id: str, name: str | None) -> Any:
    return {"id": step_id, "name": name, "seq": 0, "status": "completed", "attempts": 1,
            "output": None, "error": None, "started_at": None, "ended_at": None}


SDK_ID = "a" * 40


def test_a_repeated_sdk_step_shows_the_codes_name_and_a_literal_one_keeps_its_own() -> None:
    names = {"foo", "foo:1", "bar:2"}
    assert gql.step_name(step(SDK_ID, "foo:1"), names) == "foo"  # the second "foo"
    assert gql.step_name(step(SDK_ID, "bar:2"), names) == "bar:2"  # no "bar" in the run
    assert gql.step_name(step("foo:1", "foo:1"), names) == "foo:1"  # a Python step's own id
    assert gql.step_name(step(SDK_ID, None), names) == SDK_ID


def test_function_names_are_ids_within_the_app() -> None:
    assert gql.function_name({"id": "shop-signup", "app_id": "shop"}) == "signup"
    assert gql.function_name({"id": "signup", "app_id": "shop"}) == "signup"
    assert gql.function_name({"id": "shop-", "app_id": "shop"}) == "shop-"


@pytest.mark.parametrize(("status", "started", "inngest"), [
    ("queued", None, "QUEUED"), ("queued", 1, "RUNNING"), ("running", 1, "RUNNING"),
    ("sleeping", 1, "RUNNING"), ("waiting", 1, "RUNNING"), ("completed", 1, "COMPLETED"),
    ("failed", 1, "FAILED"), ("cancelled", None, "CANCELLED"), ("skipped", None, "SKIPPED")])
def test_run_statuses_in_inngests_words(status: str, started: int | None, inngest: str) -> None:
    assert gql.run_status({"status": status, "started_at": started}) == inngest


def test_output_ids_round_trip_and_others_are_refused() -> None:
    for args in (("r1", None, None), ("r1", "s:1/é", None), ("r1", SDK_ID, 2)):
        assert gql._read_output_id(gql.output_id(*args)) == args
    for bad in ("", "not-one", gql.output_id("r1")[:-2], "WzEsMiwzXQ"):  # [1,2,3]
        with pytest.raises(GraphQLError, match="is not one this server gave"):
            gql._read_output_id(bad)


def test_errors_as_inngests_step_error() -> None:
    assert gql.step_error(json.dumps({"name": "E", "message": "m", "stack": "s",
                                      "cause": {"message": "c"}})) == {
        "message": "m", "name": "E", "stack": "s", "cause": {"message": "c"}}
    assert gql.step_error(json.dumps("plain")) == {
        "message": "plain", "name": None, "stack": None, "cause": None}
    assert gql.step_error(json.dumps({"message": {"deep": 1}}))["message"] == '{"deep":1}'
    assert gql.step_error(None) is None


def test_cron_runs_are_stream_items_of_their_expression() -> None:
    timer = {"id": "cron:a:f:1", "name": "inngest/scheduled.timer", "ts": 1, "received_at": 1,
             "data": json.dumps({"cron": "TZ=Europe/Paris 0 9 * * *"})}
    finished = {**timer, "id": "e2", "name": "inngest/function.finished", "data": "{}"}
    assert gql._stream_item(None, timer, [])["type"] == "CRON"
    assert gql._stream_item(None, timer, [])["trigger"] == "TZ=Europe/Paris 0 9 * * *"
    assert not gql._internal(timer) and gql._internal(finished)


def test_the_schema_keeps_inngests_names_for_what_the_sdk_helpers_read() -> None:
    fields = {name: set(t.fields) for name, t in gql.SCHEMA.type_map.items()
              if hasattr(t, "fields") and not name.startswith("__")}
    assert {"stream", "event", "events", "eventV2", "run", "runTraceSpanOutputByID",
            "runTrigger"} <= fields["Query"]
    assert {"name", "stepType", "attempts", "outputID", "status", "childrenSpans", "stepID",
            "spanID", "metadata"} <= fields["RunTraceSpan"]


def test_an_output_id_nested_or_long_beyond_reason_is_refused_as_any_other() -> None:
    import base64

    for raw in (b"[" * 100_000, b'["r", "' + b"x" * 10_000 + b'", null]'):
        with pytest.raises(GraphQLError, match="is not one this server gave"):
            gql._read_output_id(base64.urlsafe_b64encode(raw).decode())
