"""Prometheus metrics: counters the worker and server bump, exposed at /metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_RECEIVED = Counter("stepwise_events_received", "Events accepted by the API",
                          registry=REGISTRY)
RUNS_STARTED = Counter("stepwise_runs_started", "Runs that began executing (first start only; "
                       "a replay or a takeover is not a new start)", ["function"],
                       registry=REGISTRY)
RUNS_FINISHED = Counter("stepwise_runs_finished", "Runs that reached a final status",
                        ["function", "status"], registry=REGISTRY)
STEPS_FINISHED = Counter("stepwise_steps_finished", "Step attempts by outcome",
                         ["function", "status"], registry=REGISTRY)
STEP_SECONDS = Histogram("stepwise_step_duration_seconds", "Time spent in step code",
                         ["function"], registry=REGISTRY,
                         buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 300))
RUN_SECONDS = Histogram("stepwise_run_duration_seconds",
                        "From a run's creation to its end (completed or failed)",
                        ["function", "status"], registry=REGISTRY,
                        buckets=(0.01, 0.1, 1, 10, 60, 600, 3600, 86400, 7 * 86400))
LEASE_TAKEOVERS = Counter("stepwise_lease_takeovers",
                          "Runs taken over because their worker's lease expired (crash, kill, "
                          "freeze)", registry=REGISTRY)
PRUNED_ROWS = Counter("stepwise_pruned_rows", "Rows deleted by retention and `stepwise prune`, "
                      "by table (runs, steps, events, flow_state: rate-limit and throttle "
                      "windows)", ["table"], registry=REGISTRY)
OLDEST_KEPT = Gauge("stepwise_oldest_finished_run_age_seconds",
                    "How long ago the oldest finished run still kept ended (after this "
                    "process's last retention pass; 0: none kept)", registry=REGISTRY)
# Read from the database when /metrics is scraped (any server shows the whole deployment):
UNFINISHED_RUNS = Gauge("stepwise_unfinished_runs",
                        "Runs not yet finished, by function and status (queued, running, "
                        "sleeping, waiting)", ["function", "status"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("stepwise_queue_depth", "Runs due now that no worker holds",
                    registry=REGISTRY)
OLDEST_DUE = Gauge("stepwise_oldest_due_run_age_seconds",
                   "How long the oldest due run that no worker holds has waited (0: none)",
                   registry=REGISTRY)


_started: dict[str, Any] = {}


def run_started(function_id: str) -> None:
    child = _started.get(function_id)
    if child is None:
        child = _started[function_id] = RUNS_STARTED.labels(function_id)
    child.inc()


def set_deployment(unfinished: list[tuple[str, str, int]], due: int,
                   oldest_wait_ms: int) -> None:
    """The gauges read from the database (`Engine.deployment_stats`)."""
    UNFINISHED_RUNS.clear()
    for function_id, status, count in unfinished:
        UNFINISHED_RUNS.labels(function_id, status).set(count)
    QUEUE_DEPTH.set(due)
    OLDEST_DUE.set(max(0, oldest_wait_ms) / 1000)


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

    def run_finished(self, function_id: str, status: str, created_ms: int | None = None,
                     ended_ms: int | None = None) -> None:
        RUNS_FINISHED.labels(function_id, status).inc()
        if created_ms is not None and ended_ms is not None:
            RUN_SECONDS.labels(function_id, status).observe(max(0, ended_ms - created_ms) / 1000)


def render() -> bytes:
    return generate_latest(REGISTRY)
