"""OpenTelemetry traces (the `otel` extra): a span per execution of a run, one per step
attempt inside it, and the trace carried from event to run to the events and invocations it
starts.

Off unless configured: `stepwise` commands call `configure()`, which reads the standard
variables (`OTEL_TRACES_EXPORTER` = `otlp` or `console`, or an `OTEL_EXPORTER_OTLP_ENDPOINT`;
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, ...). A run resumes in many executions, maybe
in several processes over days, so there is no single span open for its whole life: each
execution is a span, all under the context of the event that started the run. That context is
stored with the event: the `traceparent` an HTTP client sent, the span of the run that sent
the event or invoked the function, or else one derived from the event id, so that every run of
one event shares a trace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any

log = logging.getLogger("stepwise.tracing")

_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_tracer: Any = None


def enabled() -> bool:
    return _tracer is not None


def valid_traceparent(value: str | None) -> str | None:
    """A W3C `traceparent` worth storing, or None."""
    if value and _TRACEPARENT.match(value.strip().lower()):
        return value.strip().lower()
    return None


def configure(provider: Any = None) -> bool:
    """Turn tracing on with `provider` (tests pass one with an in-memory exporter), or from
    the environment; True when on. Off when nothing asks for it."""
    global _tracer
    if provider is None:
        exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if not exporters and any(os.environ.get(v) for v in (
                "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            exporters = "otlp"
        if exporters in ("", "none"):
            _tracer = None
            return False
        try:
            provider = _provider_from_env(exporters)
        except ImportError:
            log.warning("OTEL_* asks for traces but opentelemetry is not installed: pip "
                        "install 'stepwise-engine[otel]'")
            return False
    _tracer = provider.get_tracer("stepwise")
    return True


def disable() -> None:
    global _tracer
    _tracer = None


def _provider_from_env(exporters: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
        "OTEL_SERVICE_NAME", "stepwise")}))
    for name in (e.strip() for e in exporters.split(",")):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", name)
    return provider


def _event_context(trace: str | None, event_id: str | None) -> Any:
    """The context a run's spans hang under: the stored one, or one made from the event id."""
    from opentelemetry import trace as api
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if trace:
        return TraceContextTextMapPropagator().extract({"traceparent": trace})
    digest = hashlib.sha256((event_id or "no-event").encode()).digest()
    context = api.SpanContext(int.from_bytes(digest[:16], "big") or 1,
                              int.from_bytes(digest[16:24], "big") or 1, is_remote=True,
                              trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED))
    return api.set_span_in_context(api.NonRecordingSpan(context))


def start_execution(function_id: str, run_id: str, event: dict[str, Any] | None,
                    trace: str | None, attempt: int) -> Any:
    """The span of one execution of a run (None when tracing is off)."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    event_id = event["id"] if event else None
    return _tracer.start_span(
        f"run {function_id}", context=_event_context(trace, event_id), kind=SpanKind.CONSUMER,
        attributes={"stepwise.run.id": run_id, "stepwise.function.id": function_id,
                    "stepwise.event.id": event_id or "",
                    "stepwise.event.name": event["name"] if event else "",
                    "stepwise.run.attempt": attempt})


def start_step(parent: Any, step_id: str, attempt: int) -> Any:
    """The span of one attempt of a step, inside its execution's span."""
    from opentelemetry import trace as api

    return _tracer.start_span(f"step {step_id}", context=api.set_span_in_context(parent),
                              attributes={"stepwise.step.id": step_id,
                                          "stepwise.step.attempt": attempt})


def end(span: Any, error: BaseException | str | None = None) -> None:
    """End a span, marking it failed when `error` is given."""
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        if isinstance(error, BaseException):
            span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()


def traceparent(span: Any) -> str | None:
    """The W3C `traceparent` of `span`, to store with events it sends or invocations."""
    if span is None:
        return None
    from opentelemetry import trace as api
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=api.set_span_in_context(span))
    return carrier.get("traceparent")
