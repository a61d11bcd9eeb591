-- Waits of wait_for_event, parent links of invoke, cron schedules, and wake-ups that arrive
-- while a run is executing (queue.nudged).
CREATE TABLE waits (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    match_path TEXT,
    match_key TEXT,
    if_expr TEXT,
    trigger_event TEXT,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX waits_lookup ON waits (event_name, match_path, match_key);
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN parent_step_id TEXT;
ALTER TABLE queue ADD COLUMN nudged INTEGER NOT NULL DEFAULT 0;
CREATE TABLE schedules (
    app_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    cron TEXT NOT NULL,
    tz TEXT NOT NULL,
    next_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, function_id, cron, tz)
);
CREATE INDEX schedules_due ON schedules (app_id, next_at);
