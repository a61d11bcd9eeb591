"""The dev server's read API (`/v0/gql`, `GET /dev`) as the Inngest SDKs' own test helpers
read it: each query below is copied from the helper that sends it, and asked of `stepwise
dev` about the runs of a real app on the PyPI SDK (`py_gql_app.py`), on SQLite and
PostgreSQL. Outside dev mode the API key is asked for, as for the management API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.conftest import POSTGRES_URL, postgres_or_skip

ROOT = Path(__file__).resolve().parents[2]
APP = "py-gql"
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")

# --- The queries, verbatim --------------------------------------------------------------------
# inngest/inngest-py, pkg/test_core/test_core/helper.py at 305bc6a83a279b6d35c1228dd48a6e6b346e3f73
PY_GET_STEPS = """
        query GetHistory($run_id: String!) {
            run(runID: $run_id) {
                trace {
                    childrenSpans {
                        name
                        outputID
                    }
                }
            }
        }
        """
PY_GET_STEP_OUTPUT = """
        query GetHistory($output_id: String!) {
            runTraceSpanOutputByID(outputID: $output_id) {
                data
                error {
                    message
                    name
                    stack
                }
            }
        }
        """
PY_RUN_IDS_OF_EVENT = """
        query GetRunFromEventID($event_id: ID!) {
            event(query: {eventId: $event_id}) {
                functionRuns {
                    id
                }
            }
        }
        """
PY_GET_RUN = """
        query GetRun($run_id: String!) {
            run(runID: $run_id) {
                output
                status
            }
            runTrigger(runID: $run_id) {
                payloads
            }
        }
        """
# inngest/inngest-js, packages/inngest/src/test/helpers.ts at
# abc4a63fb8a5d8d1599ee7a3afbeb2b82d9cc875 (receivedEventWithName, eventRunWithName,
# TimelineItem.getOutput, runHasTimeline; checkIntrospection reads GET /dev)
JS_EVENTS = """query Events($query: EventsQuery!) {
  events(query: $query) {
    id
    name
    payload
  }
}"""
JS_EVENT_STREAM = """query GetEventStream {
        stream(query: {limit: 999, includeInternalEvents: false}) {
          id
          trigger
          runs {
            id
            function {
              name
            }
          }
        }
      }"""
JS_TIMELINE_OUTPUT = """query GetRunTimelineOutput($outputId: String!) {
          runTraceSpanOutputByID(outputID: $outputId) {
            data
            error {
              name
              message
              stack
              cause
            }
          }
        }"""
JS_RUN_TIMELINE = """query GetRunTimeline($runId: String!) {
          run(runID: $runId) {
            trace(preview: true) {
              name
              stepType
              attempts
              outputID
              status
              childrenSpans {
                name
                stepType
                attempts
                outputID
                status
                childrenSpans {
                  name
                  stepType
                  attempts
                  outputID
                  status
                }
              }
            }
          }
        }"""
# inngest/inngest-js, packages/test-harness/src/utils.ts at the same commit (fetchRunTrace,
# fetchTraceOutput, getRunTraceMetadata)
HARNESS_RUN_TRACE = """query ($runId: String!) {
        run(runID: $runId) {
          status
          trace(preview: true) {
            status
            outputID
          }
        }
      }"""
HARNESS_TRACE_OUTPUT = """query ($traceID: String!) {
        runTraceSpanOutputByID(outputID: $traceID) {
          data
          error {
            message
            name
          }
        }
      }"""
HARNESS_TRACE_METADATA = """fragment TraceMetadataFields on RunTraceSpan {
        name
        stepID
        spanID
        metadata {
          scope
          kind
          values
          updatedAt
        }
      }

      query ($runId: String!) {
        run(runID: $runId) {
          trace(preview: true) {
            ...TraceMetadataFields
            childrenSpans {
              ...TraceMetadataFields
              childrenSpans {
                ...TraceMetadataFields
              }
            }
          }
        }
      }"""
# inngest/inngest-js, packages/inngest/src/test/integration/utils.ts at the same commit
# (fetchEvent)
JS_FETCH_EVENT = """query Event($id: ULID!) {
          eventV2(id: $id) {
            idempotencyKey
            name
            raw
          }
        }"""


def call(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """An HTTP request's status and JSON answer, refusals included."""
    request = urllib.request.Request(url, data=body, method=method, headers={
        "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def post_gql(base: str, query: str, variables: dict[str, Any] | None = None,
             operation: str | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"query": query, "variables": variables or {}}
    if operation:
        body["operationName"] = operation
    status, answer = call("POST", base + "/v0/gql", json.dumps(body).encode(), headers)
    return status, dict(answer)


class Dev:
    def __init__(self, base: str) -> None:
        self.base = base

    def gql(self, query: str, variables: dict[str, Any] | None = None,
            operation: str | None = None) -> dict[str, Any]:
        status, answer = post_gql(self.base, query, variables, operation)
        assert status == 200 and "errors" not in answer, answer
        return dict(answer["data"])

    def send(self, name: str, data: dict[str, Any]) -> str:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET", {"name": name, "data": data})
        assert answer["status"] == 200
        return str(answer["ids"][0])

    def run_ids(self, event_id: str) -> list[str]:
        """inngest-py's get_run_ids_from_event_id: the event's runs once there is one."""
        def found() -> list[str] | None:
            event = self.gql(PY_RUN_IDS_OF_EVENT, {"event_id": event_id})["event"]
            runs = event.get("functionRuns") or []
            return [r["id"] for r in runs] if len(runs) == 1 else None
        return list(wait_until(found, 30, f"a run of {event_id}"))

    def run(self, run_id: str, status: str, *, wake: bool = False) -> dict[str, Any]:
        """inngest-py's wait_for_run_status; `wake` ends retry waits early (a step's backoff
        is seconds long)."""
        def ended() -> dict[str, Any] | None:
            data = self.gql(PY_GET_RUN, {"run_id": run_id})
            if wake and data["run"]["status"] == "RUNNING":  # 409: nothing to wake now
                assert call("POST", f"{self.base}/api/v1/runs/{run_id}/wake")[0] in (200, 409)
            return data if data["run"]["status"] == status else None
        return dict(wait_until(ended, 60, f"run {run_id} {status}"))

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.gql(PY_GET_STEPS, {"run_id": run_id})["run"]["trace"]["childrenSpans"])

    def step_output(self, run_id: str, name: str, index: int = 0) -> dict[str, Any]:
        """inngest-py's get_step_output: the index-th span of that name, its output."""
        (output_id,) = [s["outputID"] for s in self.steps(run_id) if s["name"] == name][
            index:index + 1]
        out = self.gql(PY_GET_STEP_OUTPUT, {"output_id": output_id})["runTraceSpanOutputByID"]
        if out["error"] is None:
            del out["error"]
        if out["data"] is not None:
            out["data"] = json.loads(out["data"])
        return dict(out)

    def timeline(self, run_id: str) -> dict[str, Any]:
        return dict(self.gql(JS_RUN_TIMELINE, {"runId": run_id}, "GetRunTimeline")["run"]
                    ["trace"])


def has_timeline(span: dict[str, Any] | None, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """inngest-js's runHasTimeline match: the first span, depth first, with those fields."""
    if not span:
        return None
    if all(span.get(k) == v for k, v in wanted.items()):
        return span
    for child in span.get("childrenSpans") or []:
        found = has_timeline(child, wanted)
        if found:
            return found
    return None


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def dev(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Dev]:
    tmp = tmp_path_factory.mktemp(f"gql-{request.param}")
    schema = None
    if request.param == "sqlite":
        db = str(tmp / "dev.db")
    else:
        postgres_or_skip()
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        db = f"{POSTGRES_URL}?options={urllib.parse.quote(f'-csearch_path={schema}')}"
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp / "app.log", "w") as log:
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.sdk.py_gql_app:app", "--port",
             str(app_port)], cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "INNGEST_DEV": base,
                                         "PYTHONPATH": str(ROOT)})
    proc = start(["dev", "-u", f"http://127.0.0.1:{app_port}/api/inngest", "--port", str(port),
                  "--db", db], tmp)
    try:
        wait_healthy(base, proc)
        wait_until(lambda: len(http("GET", base + "/dev")["functions"]) == 4, 60,
                   "the app's sync")
        yield Dev(base)
    finally:
        stop(proc)
        app.terminate()
        app.wait(10)
        if schema is not None:
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_the_python_sdk_helpers_read_a_runs_status_output_trigger_and_steps(dev: Dev) -> None:
    event_id = dev.send("gql/steps", {"n": 21})
    (run_id,) = dev.run_ids(event_id)
    data = dev.run(run_id, "COMPLETED")
    assert json.loads(data["run"]["output"]) == {"foo": [0, 1], "doubled": 42}
    (payload,) = data["runTrigger"]["payloads"]
    assert {k: json.loads(payload)[k] for k in ("id", "name", "data")} == {
        "id": event_id, "name": "gql/steps", "data": {"n": 21}}
    # A repeated step id shows its name twice, in order, as Inngest shows it.
    assert [s["name"] for s in dev.steps(run_id)] == ["foo", "foo", "double", "Finalization"]
    assert dev.step_output(run_id, "foo") == {"data": 0}
    assert dev.step_output(run_id, "foo", index=1) == {"data": 1}
    assert dev.step_output(run_id, "double") == {"data": 42}


def test_a_step_failing_for_good_reads_as_the_js_helpers_expect(dev: Dev) -> None:
    """inngest-js's test/functions/unhandled-step-errors, through its helpers' queries."""
    event_id = dev.send("gql/fails", {})

    def run_in_stream() -> str | None:
        stream = dev.gql(JS_EVENT_STREAM, operation="GetEventStream")["stream"]
        item = next((i for i in stream if i["id"] == event_id), None)
        run = next((r for r in (item or {}).get("runs") or []
                    if r["function"]["name"] == "unhandled-step-errors"), None)
        return None if run is None else str(run["id"])
    run_id = str(wait_until(run_in_stream, 30, "the run in the stream"))
    failed = dev.run(run_id, "FAILED", wake=True)
    assert json.loads(failed["run"]["output"])["message"] == "A failed!"

    trace = dev.timeline(run_id)
    step = has_timeline(trace, {"attempts": 1, "stepType": "RUN", "status": "FAILED",
                                "name": "a fails"})
    assert step is not None
    output = dev.gql(JS_TIMELINE_OUTPUT, {"outputId": step["outputID"]},
                     "GetRunTimelineOutput")["runTraceSpanOutputByID"]
    assert output["data"] is None
    error = output["error"]
    assert (error["name"], error["message"], error["cause"]) == ("ValueError", "A failed!", None)
    assert isinstance(error["stack"], str) and "A failed!" in error["stack"]
    # Each attempt is a child of the step, with its own error.
    assert [(a["name"], a["status"], a["attempts"]) for a in step["childrenSpans"]] == [
        ("Attempt 0", "FAILED", 0), ("Attempt 1", "FAILED", 1)]
    assert has_timeline(trace, {"stepType": "FINALIZATION", "status": "FAILED"}) is not None
    assert has_timeline(trace, {"stepType": "RUN", "name": "b never runs"}) is None

    # The test harness reads a run's result from its trace's root.
    root = dev.gql(HARNESS_RUN_TRACE, {"runId": run_id})["run"]
    assert root["status"] == "FAILED" and root["trace"]["status"] == "FAILED"
    result = dev.gql(HARNESS_TRACE_OUTPUT, {"traceID": root["trace"]["outputID"]})
    assert result["runTraceSpanOutputByID"] == {
        "data": None, "error": {"message": "A failed!", "name": "ValueError"}}


def test_a_retried_step_shows_its_failed_and_its_good_attempt(dev: Dev) -> None:
    (run_id,) = dev.run_ids(dev.send("gql/retried", {}))
    assert json.loads(dev.run(run_id, "COMPLETED", wake=True)["run"]["output"]) == "ok"
    step = has_timeline(dev.timeline(run_id), {"name": "flaky"})
    assert step is not None and (step["status"], step["attempts"]) == ("COMPLETED", 1)
    first, second = step["childrenSpans"]
    assert (first["name"], first["status"], second["name"], second["status"]) == (
        "Attempt 0", "FAILED", "Attempt 1", "COMPLETED")
    failed = dev.gql(JS_TIMELINE_OUTPUT, {"outputId": first["outputID"]})
    assert failed["runTraceSpanOutputByID"]["error"]["message"] == "try again"
    good = dev.gql(JS_TIMELINE_OUTPUT, {"outputId": second["outputID"]})
    assert good["runTraceSpanOutputByID"] == {"data": '"ok"', "error": None}
    assert dev.step_output(run_id, "flaky") == {"data": "ok"}


def test_a_sleeping_run_is_running_then_cancelled(dev: Dev) -> None:
    (run_id,) = dev.run_ids(dev.send("gql/naps", {}))

    def sleeping() -> dict[str, Any] | None:
        trace = dev.timeline(run_id)
        return trace if has_timeline(trace, {"name": "nap", "status": "WAITING"}) else None
    trace = wait_until(sleeping, 30, "the nap")
    assert (trace["name"], trace["status"]) == ("naps", "WAITING")
    nap = has_timeline(trace, {"name": "nap"})
    assert nap is not None and (nap["stepType"], nap["outputID"]) == ("SLEEP", None)
    assert dev.run(run_id, "RUNNING")["run"]["output"] is None
    http("POST", f"{dev.base}/api/v1/runs/{run_id}/cancel")
    dev.run(run_id, "CANCELLED")
    assert has_timeline(dev.timeline(run_id), {"stepType": "FINALIZATION"}) is None


def test_events_as_the_js_helpers_list_and_fetch_them(dev: Dev) -> None:
    event_id = dev.send("gql/steps", {"n": 1, "who": "events"})
    events = dev.gql(JS_EVENTS, {"query": {}}, "Events")["events"]
    listed = next(e for e in events if e["id"] == event_id)
    assert listed["name"] == "gql/steps"
    assert json.loads(listed["payload"]) == {"n": 1, "who": "events"}
    fetched = dev.gql(JS_FETCH_EVENT, {"id": event_id}, "Event")["eventV2"]
    assert fetched["name"] == "gql/steps"
    assert json.loads(fetched["raw"])["data"] == {"n": 1, "who": "events"}
    (run_id,) = dev.run_ids(event_id)
    dev.run(run_id, "COMPLETED")
    metadata = dev.gql(HARNESS_TRACE_METADATA, {"runId": run_id})["run"]["trace"]
    assert metadata["name"] == "steps" and metadata["metadata"] == []
    assert [c["name"] for c in metadata["childrenSpans"]] == [
        "foo", "foo", "double", "Finalization"]


def test_dev_lists_the_functions_as_the_js_introspection_check_reads_them(dev: Dev) -> None:
    functions = http("GET", dev.base + "/dev")["functions"]
    steps = next(f for f in functions if f["name"] == "steps")
    assert steps["triggers"] == [{"event": "gql/steps"}]
    (step,) = steps["steps"]
    assert (step["id"], step["name"]) == ("step", "step")
    assert re.match(r"^http.+\?fnId=.+-steps&stepId=step$", step["uri"])


def test_bad_queries_are_answered_with_graphql_errors(dev: Dev) -> None:
    status, answer = post_gql(dev.base, "{ run(runID: ")
    assert status == 422 and "Syntax Error" in answer["errors"][0]["message"]
    status, answer = post_gql(dev.base, "{ run(runID: \"x\") { nope } }")
    assert status == 422 and "Cannot query field 'nope'" in answer["error"]
    status, answer = post_gql(dev.base, PY_GET_RUN)  # its variable missing
    assert status == 422 and "run_id" in answer["errors"][0]["message"]
    # A field that cannot be answered: 200, the error beside the data, as GraphQL answers.
    status, answer = post_gql(dev.base, PY_GET_STEP_OUTPUT, {"output_id": "not-one"})
    assert status == 200 and answer["data"] is None
    assert "is not one this server gave" in answer["errors"][0]["message"]
    assert dev.gql('{ run(runID: "01NOSUCHRUN") { status } }') == {"run": None}
    for body in (b"[]", b'{"query": 5}', b'{"query": "{ functions { id } }", "variables": 1}'):
        status, answer = call("POST", dev.base + "/v0/gql", body)
        assert status == 400 and "error" in answer
    query = urllib.parse.urlencode({"query": "{ functions { name } }"})
    names = {f["name"] for f in http("GET", f"{dev.base}/v0/gql?{query}")["data"]["functions"]}
    assert names == {"steps", "unhandled-step-errors", "retried", "naps"}


def test_outside_dev_mode_the_read_api_needs_the_api_key(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["server", "--db", str(tmp_path / "s.db"), "--port", str(port), "--host",
                  "127.0.0.1", "--api-key", "api-key-for-gql-0123", "--event-key",
                  "event-key-for-gql-0123"], tmp_path)
    try:
        wait_healthy(base, proc)
        query = "{ functions { name } }"
        for headers in ({}, {"authorization": "Bearer event-key-for-gql-0123"}):
            assert post_gql(base, query, headers=headers)[0] == 401
            for path in (f"/v0/gql?{urllib.parse.urlencode({'query': query})}", "/dev"):
                assert call("GET", base + path, headers=headers)[0] == 401
        key = {"authorization": "Bearer api-key-for-gql-0123"}
        assert post_gql(base, query, headers=key) == (200, {"data": {"functions": []}})
        assert call("GET", base + "/dev", headers=key)[0] == 404  # a dev server's only
    finally:
        stop(proc)
