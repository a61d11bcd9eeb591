"""The Inngest SDK protocol pieces without a network: registration translation and the
answers of an app as outcomes (against the recorded SDK traffic where it exists)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stepwise.engine.outcomes import (
    Invoke,
    RunCompleted,
    RunFailed,
    SleepUntil,
    StepCompleted,
    StepFailed,
    WaitForEvent,
)
from stepwise.remote import gateway, protocol, registration
from stepwise.remote.gateway import GatewayCall

#: A sync recorded between the real Python SDK (inngest 0.5.19, FastAPI) and a server.
RECORDED_SYNC = Path(__file__).parent / "data" / "inngest_py_register.json"
NOW = 1_800_000_000_000


def calls() -> protocol.CallState:
    return protocol.CallState(steps={}, stack=["a" * 40], attempts={"b" * 40: 2})


def test_durations_crons_and_scopes_translate() -> None:
    assert registration.duration("1h30m", "x") == timedelta(hours=1, minutes=30)
    assert registration.duration("100ms", "x") == timedelta(milliseconds=100)
    with pytest.raises(registration.RegistrationError, match="not a duration"):
        registration.duration("5 minutes", "debounce.period")
    body = {"appName": "a", "url": "http://h/api", "functions": [{
        "id": "a-f", "name": "f", "triggers": [{"cron": "TZ=Europe/Paris 0 9 * * *"}],
        "concurrency": [{"limit": 2, "key": "event.data.u", "scope": "account"}],
        "throttle": {"limit": 5, "period": "10s", "burst": 1},
        "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 7},
                           "runtime": {"type": "http", "url": "http://h/api?fnId=a-f"}}}}]}
    (fn,) = registration.parse(body).functions
    assert fn.triggers[0].to_json() == {"cron": "0 9 * * *", "tz": "Europe/Paris"}
    assert fn.flow.concurrency[0].scope == "app" and fn.retry.retries == 7
    assert fn.flow.throttle is not None and fn.flow.throttle.period == timedelta(seconds=10)


def sync(*functions: dict[str, Any], **app: Any) -> dict[str, Any]:
    return {"appname": "a", "url": "http://h/api", **app, "functions": [
        {"triggers": [{"event": "e"}], "steps": {"step": {
            "runtime": {"type": "http", "url": "http://h/api"}}}, **f} for f in functions]}


def test_concurrency_reads_as_a_number_an_object_or_a_list() -> None:
    """The users' sample sends `concurrency: { limit: 5 }` (the JS SDK passes it on as written);
    Python sends a list; a bare number is the limit."""
    shapes = [5, {"limit": 5}, [{"limit": 5}], [{"limit": 5, "scope": "fn"}]]
    synced = registration.parse(sync(*({"id": f"a-{i}", "concurrency": shape}
                                       for i, shape in enumerate(shapes))))
    assert {fn.flow.concurrency[0].to_json()["limit"] for fn in synced.functions} == {5}
    assert all(fn.problems == () for fn in synced.functions)
    (unlimited,) = registration.parse(sync({"id": "a-f", "concurrency": 0})).functions
    assert unlimited.flow.concurrency == ()  # Inngest: 0 is no limit of its own


@pytest.mark.parametrize(("change", "named"), [
    ({"singleton": {"key": "k", "mode": "sometimes"}}, "singleton.mode"),
    ({"batchEvents": {"maxSize": 2, "timeout": "1s", "if": "event.data.x ==="}},
     "batchEvents: Batch: if_: invalid expression"),
    ({"throttle": {"limit": 1, "period": "1s", "burst": "many"}}, "throttle.burst"),
    ({"throttle": {"limit": 1, "period": "1s", "burst": -1}}, "burst must be a non-neg"),
    ({"cancel": [{"event": "stop", "timeout": "soon"}]}, "cancel[0].timeout"),
    ({"debounce": {"period": "soon"}}, "debounce.period"),
    ({"concurrency": {"limit": "five"}}, "concurrency.limit"),
    ({"concurrency": [{"limit": 2, "scope": "planet"}]}, "concurrency[0].scope"),
    ({"triggers": [{"cron": "*/61 * * * *"}]}, "triggers[0]"),
    ({"steps": {"step": {"runtime": {"type": "http", "url": "http://h/api"},
                         "retries": {"attempts": -1}}}}, "retries.attempts"),
])
def test_an_option_that_cannot_be_honoured_marks_its_function_only(
        change: dict[str, Any], named: str) -> None:
    """The function is registered with the problem named; the app's other functions are not
    touched by it."""
    synced = registration.parse(sync({"id": "a-odd", **change}, {"id": "a-plain"}))
    odd, plain = synced.functions
    assert len(odd.problems) == 1 and named in odd.problems[0], odd.problems
    assert odd.to_json()["problems"] == list(odd.problems)
    assert plain.problems == () and plain.triggers[0].to_json() == {"event": "e"}


def test_retries_above_inngests_largest_read_as_it_with_a_warning() -> None:
    synced = registration.parse(sync({"id": "a-f", "steps": {"step": {
        "runtime": {"type": "http", "url": "http://h/api"}, "retries": {"attempts": 99}}}}))
    assert synced.functions[0].retry.retries == 20 and synced.functions[0].problems == ()
    assert synced.warnings == ("function 'a-f': retries.attempts 99 is more than Inngest's "
                               "largest, 20; read as 20",)


def test_unknown_fields_are_ignored_with_a_warning() -> None:
    synced = registration.parse(sync({"id": "a-f", "colour": 1, "optimizeParallelism": True,
                                      "debounce": {"period": "5s", "jitter": "1s"}},
                                     newAppField={"x": 1}))
    (fn,) = synced.functions
    assert fn.problems == () and fn.flow.debounce is not None
    assert synced.warnings == (
        "the app: field 'newAppField' is not known to this server; ignored",
        "function 'a-f': field 'colour' is not known to this server; ignored",
        "function 'a-f': field 'optimizeParallelism' is not known to this server; ignored",
        "function 'a-f': debounce: field 'jitter' is not known to this server; ignored")


@pytest.mark.parametrize(("body", "named"), [
    ([], "JSON object"), ({"url": "http://h/api", "functions": []}, "appName"),
    ({"appName": "a", "url": "ftp://h", "functions": []}, "url"),
    ({"appName": "a", "url": "http://h/api", "functions": {}}, "functions must be a list"),
    (sync({"id": ""}), "functions[0].id"), (sync({"id": "a-f"}, {"id": "a-f"}), "unique"),
    ({"appName": "a", "url": "http://h/api", "functions": [{"id": "a-f"}]}, "runtime"),
])
def test_a_sync_whose_frame_cannot_be_read_is_refused_by_name(body: Any, named: str) -> None:
    with pytest.raises(registration.RegistrationError, match=re.escape(named)):
        registration.parse(body)


def test_the_recorded_python_sync_translates_with_its_unsupported_options_marked() -> None:
    body = json.loads(RECORDED_SYNC.read_text())["request"]["body"]
    synced = registration.parse(body)
    assert synced.app_id == "py-capture-app" and synced.sdk == "py:v0.5.19"
    marked = {fn.id: fn.problems for fn in synced.functions if fn.problems}
    assert marked == {
        # as Inngest refuses it: "Batching and singletons are mutually exclusive"
        "py-capture-app-batch-demo": ("singleton cannot be combined with batch",)}
    assert synced.warnings == ()
    config_demo = next(f for f in synced.functions if f.id == "py-capture-app-config-demo")
    assert config_demo.flow.throttle is not None and config_demo.flow.throttle.burst == 2
    cancel = body["functions"][[f["id"] for f in body["functions"]].index(config_demo.id)][
        "cancel"][0]
    assert config_demo.flow.cancel_on[0].timeout_ms == registration.duration(
        cancel["timeout"], "timeout").total_seconds() * 1000
    (alone,) = registration.parse(sync({"id": "a-f", "singleton": {
        "key": "event.data.user_id", "mode": "cancel"}})).functions
    assert alone.problems == () and alone.flow.singleton is not None
    assert alone.flow.singleton.to_json() == {"mode": "cancel", "key": "event.data.user_id"}


def test_answers_become_outcomes() -> None:
    done = protocol.outcomes(200, {}, b'"ok"', calls(), NOW, NOW)
    assert done == [RunCompleted('"ok"')]
    step = protocol.outcomes(206, {}, json.dumps([{"op": "StepRun", "id": "b" * 40,
                                                   "data": {"x": 1}}]).encode(),
                             calls(), NOW, NOW + 5)
    assert step == [StepCompleted("b" * 40, 1, '{"x":1}', NOW, NOW + 5, 2)]
    error = protocol.outcomes(206, {}, json.dumps({"op": "StepError", "id": "c" * 40,
                                                   "error": {"name": "E", "message": "m"}})
                              .encode(), calls(), NOW, NOW)
    assert isinstance(error[0], StepFailed) and error[0].retriable
    sleep = protocol.outcomes(206, {}, json.dumps([{"op": "Sleep", "id": "d" * 40,
                                                    "name": "2s"}]).encode(), calls(), NOW, NOW)
    assert sleep == [SleepUntil("d" * 40, 1, NOW + 2000, NOW)]
    iso = protocol.outcomes(206, {}, json.dumps([{"op": "Sleep", "id": "d" * 40,
                                                  "name": "2027-01-15T08:00:00.000Z"}]).encode(),
                            calls(), NOW, NOW)
    until = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp() * 1000
    assert isinstance(iso[0], SleepUntil) and iso[0].until == until
    wait = protocol.outcomes(206, {}, json.dumps([{"op": "WaitForEvent", "id": "e" * 40,
                                                   "name": "booking.created", "opts": {
                                                       "if": "event.data.u == async.data.u",
                                                       "timeout": "1h"}}]).encode(),
                             calls(), NOW, NOW)
    assert wait == [WaitForEvent("e" * 40, 1, "booking.created", NOW + 3_600_000, NOW,
                                 if_="event.data.u == async.data.u")]


def test_errors_follow_the_no_retry_header_and_retry_after() -> None:
    body = json.dumps({"name": "NonRetriableError", "message": "no"}).encode()
    final = protocol.outcomes(500, {"x-inngest-no-retry": "true"}, body, calls(), NOW, NOW)
    assert final == [RunFailed({"name": "NonRetriableError", "message": "no"},
                               retriable=False)]
    again = protocol.outcomes(500, {"retry-after": "30"}, body, calls(), NOW, NOW)
    assert isinstance(again[0], RunFailed) and again[0].retriable
    assert again[0].retry_after_ms == 30_000
    client_error = protocol.outcomes(400, {}, body, calls(), NOW, NOW)
    assert isinstance(client_error[0], RunFailed) and not client_error[0].retriable
    planned = protocol.outcomes(206, {}, b'[{"op": "StepPlanned", "id": "a"}, '
                                         b'{"op": "StepPlanned", "id": "b"}]', calls(), NOW, NOW)
    assert planned == protocol.Planned(["a", "b"], [1, 2], [])
    with pytest.raises(protocol.ProtocolError, match="distinct ids"):
        protocol.outcomes(206, {}, b'[{"op": "StepPlanned", "id": "a"}, '
                                   b'{"op": "StepPlanned", "id": "a"}]', calls(), NOW, NOW)
    assert protocol.targeted("http://h:1/api/inngest?fnId=a-f&stepId=step", "abc") == (
        "http://h:1/api/inngest?fnId=a-f&stepId=abc")
    with pytest.raises(protocol.ProtocolError, match="DeferAdd is not supported"):
        protocol.outcomes(206, {}, b'{"op": "DeferAdd", "id": "a"}', calls(), NOW, NOW)
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        protocol.outcomes(206, {}, b"<html>", calls(), NOW, NOW)


def test_an_answer_of_several_opcodes_is_handled_op_by_op() -> None:
    """As Inngest's executor does: `Promise.all` of two invokes, a sleep beside a planned
    step, steps then the run's end (the JS SDK's RunComplete)."""
    invoke = {"op": "InvokeFunction", "opts": {"function_id": "app-child",
                                               "payload": {"data": {}}}}
    two = protocol.outcomes(206, {}, json.dumps([{**invoke, "id": "i1"}, {**invoke, "id": "i2"}])
                            .encode(), calls(), NOW, NOW)
    assert [(o.step_id, o.seq) for o in two if isinstance(o, Invoke)] == [("i1", 1), ("i2", 2)]
    mixed = protocol.outcomes(206, {}, json.dumps([
        {"op": "Sleep", "id": "s", "name": "30s"}, {"op": "StepPlanned", "id": "p"},
        {"op": "StepRun", "id": "r", "data": 7}]).encode(), calls(), NOW, NOW)
    assert mixed == protocol.Planned(["p"], [2], [SleepUntil("s", 1, NOW + 30_000, NOW),
                                                  StepCompleted("r", 3, "7", NOW, NOW)])
    ended = protocol.outcomes(206, {}, json.dumps([
        {"op": "StepRun", "id": "r", "data": 1},
        {"op": "RunComplete", "id": "done", "data": {"ok": True}}]).encode(), calls(), NOW, NOW)
    assert ended == [StepCompleted("r", 1, "1", NOW, NOW), RunCompleted('{"ok":true}')]


def test_a_step_error_keeps_what_the_sdk_sent_and_honours_no_retry() -> None:
    """`cause` (and the SDK's other fields) are kept, and given back in the memo as Inngest
    does; `x-inngest-no-retry` on a 206 makes the step's error final."""
    sent = {"name": "Error", "message": "Oh no!", "stack": "Error: Oh no!", "__serialized": True,
            "code": "x", "cause": {"name": "Error", "message": "This is the cause",
                                   "__serialized": True}}
    (failed,) = protocol.outcomes(206, {"x-inngest-no-retry": "true"}, json.dumps(
        [{"op": "StepError", "id": "f", "error": sent}]).encode(), calls(), NOW, NOW)
    assert isinstance(failed, StepFailed) and not failed.retriable
    assert failed.error == {"name": "Error", "message": "Oh no!", "stack": "Error: Oh no!",
                            "code": "x", "step_id": "f",
                            "cause": {"name": "Error", "message": "This is the cause"}}
    assert protocol.memo_error(failed.error) == {
        "name": "Error", "message": "Oh no!", "stack": "Error: Oh no!",
        "cause": {"name": "Error", "message": "This is the cause"}}


def test_invoke_function_names_any_apps_function_with_a_timeout() -> None:
    op = (b'{"op": "InvokeFunction", "id": "h", "opts": {"function_id": "billing-tax", '
          b'"payload": {"data": {"amount": 5}, "v": null}, "timeout": "1m"}}')
    (invoke,) = protocol.outcomes(206, {}, op, calls(), NOW, NOW)
    assert invoke == Invoke("h", len(calls().stack), "billing-tax", '{"amount":5}', NOW,
                            NOW + 60_000)
    (no_timeout,) = protocol.outcomes(206, {}, op.replace(b'"1m"', b"null"), calls(), NOW, NOW)
    assert isinstance(no_timeout, Invoke) and no_timeout.expires_at is None
    for bad, why in ((b'"function_id": ""', "function_id"),
                     (b'"function_id": "billing-tax", "payload": {"data": [1]}', "object"),
                     (b'"function_id": "f", "timeout": "soon"', "duration")):
        with pytest.raises(protocol.ProtocolError, match=why):
            protocol.outcomes(206, {}, b'{"op": "InvokeFunction", "id": "h", "opts": {' + bad +
                              b"}}", calls(), NOW, NOW)


def test_a_large_memo_is_left_out_of_the_call_for_the_sdk_to_fetch() -> None:
    from stepwise.engine import RunState

    run: Any = {"id": "r1", "retry": 0}
    event: Any = {"name": "e", "data": '{"k":1}', "id": "ev1", "ts": NOW}
    small = protocol.CallState({"a" * 40: {"data": "x"}}, ["a" * 40], {})
    body = protocol.request_body(RunState(run, event), small, 3, -1)
    assert body["use_api"] is False and body["steps"] == small.steps
    assert body["events"] == [{"name": "e", "data": {"k": 1}, "id": "ev1", "ts": NOW,
                               "user": {}}]
    large = protocol.CallState({"a" * 40: {"data": "x" * protocol.USE_API_BYTES}},
                               ["a" * 40], {})
    body = protocol.request_body(RunState(run, event), large, 3, 2)
    assert body["use_api"] is True and body["ctx"]["use_api"] is True
    assert body["steps"] == {} and body["events"] == []
    assert body["event"]["id"] == "ev1" and body["ctx"]["stack"]["stack"] == ["a" * 40]


def test_gateway_opcodes_become_requests_for_the_executor_with_credentials_never_shown(
        ) -> None:
    """AIGateway: the auth key where each format wants it, the adapter's headers after;
    Gateway: the fetch as the SDK describes it; a request that cannot be made is marked."""
    def request(op: dict[str, Any]) -> GatewayCall:
        (made,) = protocol.outcomes(206, {}, json.dumps([op]).encode(), calls(), NOW, NOW)
        assert isinstance(made, GatewayCall)
        return made
    ai = {"op": "AIGateway", "id": "h1", "displayName": "summarize", "opts": {
        "type": "step.ai.infer", "url": "https://api.openai.com/v1/chat/completions",
        "auth_key": "sk-secret", "format": "openai-chat", "headers": {"x-team": "news"},
        "body": {"model": "m", "messages": []}}}
    openai = request(ai)
    assert openai.ai and openai.method == "POST" and openai.name == "summarize"
    assert openai.headers == [("content-type", "application/json"),
                              ("authorization", "Bearer sk-secret"), ("x-team", "news")]
    assert json.loads(openai.body or b"") == {"model": "m", "messages": []}
    assert "sk-secret" not in repr(openai)
    anthropic = request({**ai, "opts": {**ai["opts"], "format": "anthropic"}})
    assert ("x-api-key", "sk-secret") in anthropic.headers
    gemini = request({**ai, "opts": {**ai["opts"], "format": "gemini",
                                     "url": "https://g.example/v1beta/models/x:gen?alt=sse"}})
    assert gemini.url == "https://g.example/v1beta/models/x:gen?alt=sse&key=sk-secret"
    assert gateway.safe_url(gemini.url) == "https://g.example/v1beta/models/x:gen"
    fetch = request({"op": "Gateway", "id": "h2", "opts": {
        "url": "http://files.example/a.txt", "method": "put", "headers": {"authorization": "t"},
        "body": "hello"}})
    assert (fetch.ai, fetch.method, fetch.body, fetch.invalid) == (False, "PUT", b"hello", None)
    assert request({"op": "Gateway", "id": "h3", "opts": {"url": "file:///etc/passwd"}}
                   ).invalid == "step.fetch: needs an http(s) URL, got 'file:///etc/passwd'"
    assert "invalid HTTP method" in str(request({"op": "Gateway", "id": "h4", "opts": {
        "url": "http://a.example/", "method": "BREW"}}).invalid)


def test_the_host_policy_refuses_addresses_that_are_not_public() -> None:
    policy = gateway.HostPolicy()
    assert policy.refused("api.example", ["93.184.215.14"]) is None
    for address in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "100.64.0.1",
                    "::1", "fd00::1", "::ffff:127.0.0.1", "64:ff9b::a00:1", "0.0.0.0",
                    "224.0.0.1"):
        assert policy.refused("h.example", [address]) is not None, address
    assert policy.refused("h.example", ["93.184.215.14", "10.0.0.1"]) is not None
    allowed = gateway.HostPolicy.from_names(["LLM.internal"])
    assert allowed.refused("llm.internal", ["10.0.0.7"]) is None
    assert allowed.refused("other.internal", ["10.0.0.7"]) is not None
    assert gateway.HostPolicy.from_names(["*"]).refused("x", ["127.0.0.1"]) is None


def test_the_sdks_step_not_found_answer_fails_the_call_under_that_name() -> None:
    body = {"error": 'Could not find step "abc" to run; timed out. Found new steps: \nb (def).',
            "requestedStep": "abc", "foundSteps": [{"id": "def", "displayName": "b"}],
            "totalFoundSteps": 1}
    (failed,) = protocol.outcomes(500, {"x-inngest-no-retry": "false"},
                                  json.dumps(body).encode(), calls(), NOW, NOW)
    assert isinstance(failed, RunFailed) and failed.retriable
    assert failed.error["name"] == "StepNotFound" and failed.error["message"] == body["error"]
    assert failed.error["step_id"] == "abc"
