-- Every failed attempt of a step or of the function body, kept for the run's history.
CREATE TABLE failures (
    run_id TEXT NOT NULL,
    step_id TEXT,
    attempt INTEGER NOT NULL,
    error TEXT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT NOT NULL
);
CREATE INDEX failures_run ON failures (run_id, ended_at);
