-- Times are integer milliseconds since the epoch; JSON is stored as text.
CREATE TABLE functions (
    app_id TEXT NOT NULL,
    id TEXT NOT NULL,
    definition TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, id)
);
CREATE TABLE function_triggers (
    event_name TEXT NOT NULL,
    app_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    PRIMARY KEY (event_name, app_id, function_id)
);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    ts BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX events_name ON events (name, received_at);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    event_id TEXT,
    status TEXT NOT NULL,
    output TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    retry INTEGER NOT NULL DEFAULT 0,
    origin_run_id TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT
);
CREATE INDEX runs_function ON runs (function_id, id);
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_event ON runs (event_id);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    output TEXT,
    error TEXT,
    started_at BIGINT,
    ended_at BIGINT,
    PRIMARY KEY (run_id, id)
);
CREATE TABLE queue (
    run_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    available_at BIGINT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at BIGINT
);
CREATE INDEX queue_due ON queue (app_id, available_at);
