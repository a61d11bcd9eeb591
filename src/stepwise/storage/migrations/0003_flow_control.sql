-- Flow control: concurrency keys of queued runs, throttle and rate-limit windows, open
-- debounce and batch groups, idempotency keys, start/finish deadlines, cancel_on waits.
CREATE TABLE queue_keys (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    lim INTEGER NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX queue_keys_key ON queue_keys (key);
ALTER TABLE queue ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE flow_state (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE pending_groups (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    first_at BIGINT NOT NULL
);
CREATE INDEX pending_groups_run ON pending_groups (run_id);
CREATE TABLE run_events (
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE deadlines (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, kind)
);
CREATE INDEX deadlines_due ON deadlines (app_id, at);
ALTER TABLE waits ADD COLUMN kind TEXT NOT NULL DEFAULT 'step';
CREATE INDEX runs_function_created ON runs (function_id, created_at);
