-- ctx.logger lines of a run's executions (capped per run by the engine).
CREATE TABLE run_logs (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at BIGINT NOT NULL,
    level TEXT NOT NULL,
    step_id TEXT,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
