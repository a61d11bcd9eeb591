-- Live workers (each heartbeat refreshes its row) and what they serve, for the dashboard's
-- workers view and its warning about runs no live worker can take.
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    functions TEXT NOT NULL,
    slots INTEGER NOT NULL,
    in_use INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
-- A run started again by an operator from a finished one ("re-run"): the run it repeats.
ALTER TABLE runs ADD COLUMN rerun_of TEXT;
-- Finished runs by time, for the functions page's counts and durations.
CREATE INDEX runs_ended ON runs (ended_at);
CREATE INDEX runs_rerun ON runs (rerun_of);
