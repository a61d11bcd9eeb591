"""OpenTelemetry spans, captured with the SDK's in-memory exporter: an event that fans out to
two functions, one with a retried step and an invoke, forms one trace under the sender's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import stepwise
from stepwise import tracing
from stepwise.testing import Harness

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.disable()


def make_app() -> stepwise.App:
    app = stepwise.App("traced")
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("first try fails")
        return "ok"

    @app.function(id="tax", trigger=stepwise.on_event("never"))
    async def tax(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("compute", lambda: ctx.event.data["amount"] // 10)

    @app.function(id="charge", trigger=stepwise.on_event("order.placed"), retries=2)
    async def charge(ctx: stepwise.Context) -> Any:
        await ctx.step.run("flaky", flaky)
        return await ctx.step.invoke("tax", function=tax, data={"amount": 100})

    @app.function(id="email", trigger=stepwise.on_event("order.placed"))
    async def email(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("send", lambda: "sent")

    return app


async def test_an_event_fanning_out_forms_one_trace(db: str,
                                                    spans: InMemorySpanExporter) -> None:
    async with Harness(make_app(), db) as h:
        response = await h.http.post(
            "/api/v1/events", json={"name": "order.placed", "data": {}},
            headers={"traceparent": f"00-{TRACE_ID}-{SENDER_SPAN}-01"})
        assert response.status_code == 200
        await h.settle()
        runs = {r["function_id"]: r for r in await h.runs()}
    assert {r["status"] for r in runs.values()} == {"completed"}
    finished = spans.get_finished_spans()
    assert {f"{s.context.trace_id:032x}" for s in finished} == {TRACE_ID}
    by_name: dict[str, list[Any]] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    # charge: a first execution whose step fails, one that retries it and invokes, one that
    # resumes with the invoked run's output.
    charge_runs = by_name["run charge"]
    assert len(charge_runs) >= 2
    for span in [*charge_runs, *by_name["run email"]]:
        assert f"{span.parent.span_id:016x}" == SENDER_SPAN  # under the sender's span
        assert span.attributes["stepwise.event.name"] == "order.placed"
    flaky = sorted(by_name["step flaky"], key=lambda s: s.start_time)
    assert [s.status.status_code for s in flaky] == [StatusCode.ERROR, StatusCode.UNSET]
    assert [s.attributes["stepwise.step.attempt"] for s in flaky] == [0, 1]
    assert flaky[0].events and flaky[0].events[0].name == "exception"
    charge_ids = {s.context.span_id for s in charge_runs}
    assert all(s.parent.span_id in charge_ids for s in flaky)
    [tax_run] = by_name["run tax"]
    assert tax_run.parent.span_id in charge_ids  # the invoking execution
    [compute] = by_name["step compute"]
    assert compute.parent.span_id == tax_run.context.span_id
    [send] = by_name["step send"]
    assert send.parent.span_id == by_name["run email"][0].context.span_id


async def test_without_a_sender_context_the_runs_of_an_event_share_a_trace(
        db: str, spans: InMemorySpanExporter) -> None:
    async with Harness(make_app(), db) as h:
        await h.send("order.placed", {})
        await h.settle()
    finished = spans.get_finished_spans()
    assert len({s.context.trace_id for s in finished}) == 1
    assert {s.name for s in finished} >= {"run charge", "run email", "run tax"}


async def test_tracing_is_off_unless_configured(db: str, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure() is False and not tracing.enabled()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    try:
        assert tracing.configure() is True and tracing.enabled()
    finally:
        tracing.disable()
