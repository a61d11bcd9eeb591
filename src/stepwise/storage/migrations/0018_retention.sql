-- Retention: the pruner reads finished runs by (ended_at, id), a page at a time, and asks of an
-- event whether any run still holds it, and of a run whether an unexpired idempotency key
-- still points at it; these make each of those an index lookup.
DROP INDEX runs_ended;
CREATE INDEX runs_ended ON runs (ended_at, id) WHERE ended_at IS NOT NULL;
CREATE INDEX run_events_event ON run_events (event_id);
CREATE INDEX idempotency_run ON idempotency (run_id);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
-- Function statistics from a rollup: per hour, function and status, how many runs
-- finished and a histogram of their durations (JSON: bucket -> count), so that the stats read
-- as much at ten million runs as at ten thousand, and outlive the runs retention deletes.
CREATE TABLE run_stats (
    slot BIGINT NOT NULL,
    function_id TEXT NOT NULL,
    status TEXT NOT NULL,
    n BIGINT NOT NULL,
    durations TEXT NOT NULL,
    PRIMARY KEY (slot, function_id, status)
);
-- Runs created in a time window (`since`/`until` filters) by index, not by reading every run
-- newer than the window (bench/history.py: 167 ms at a million runs for a window 15 days ago).
CREATE INDEX runs_created ON runs (created_at);
-- Singleton functions: the unfinished run that holds each singleton key (dropped when it
-- finishes, as its concurrency keys are).
CREATE TABLE singletons (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL
);
CREATE INDEX singletons_run ON singletons (run_id);
-- Signals (`POST /v1/signals`, an SDK's step.waitForSignal): the one run step waiting for
-- each signal, until it expires; dropped when its run finishes.
CREATE TABLE signal_waits (
    signal TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX signal_waits_run ON signal_waits (run_id);
