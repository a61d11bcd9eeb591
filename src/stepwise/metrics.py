"""Prometheus metrics: counters the worker and server bump, exposed at /metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_RECEIVED = Counter("stepwise_events_received", "Events accepted by the API",
                          registry=REGISTRY)
RUNS_FINISHED = Counter("stepwise_runs_finished", "Runs that reached a final status",
                        ["function", "status"], registry=REGISTRY)
STEPS_FINISHED = Counter("stepwise_steps_finished", "Step attempts by outcome",
                         ["function", "status"], registry=REGISTRY)
STEP_SECONDS = Histogram("stepwise_step_duration_seconds", "Time spent in step code",
                         ["function"], registry=REGISTRY,
                         buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 300))


class Metrics:
    """The worker's view of the metrics; one place to change what is recorded."""

    def __init__(self) -> None:
        # Labelled children, looked up once: `.labels()` costs more than a no-op step.
        self._steps: dict[tuple[str, str], tuple[Any, Any]] = {}

    def step_finished(self, function_id: str, status: str, started_ms: int,
                      ended_ms: int) -> None:
        children = self._steps.get((function_id, status))
        if children is None:
            children = (STEPS_FINISHED.labels(function_id, status),
                        STEP_SECONDS.labels(function_id))
            self._steps[(function_id, status)] = children
        children[0].inc()
        children[1].observe(max(0.0, (ended_ms - started_ms) / 1000))

    def run_finished(self, function_id: str, status: str) -> None:
        RUNS_FINISHED.labels(function_id, status).inc()


def render() -> bytes:
    return generate_latest(REGISTRY)
