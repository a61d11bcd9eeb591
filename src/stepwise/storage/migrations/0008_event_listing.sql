-- Listing events newest first (the events API), and a run's children (invoke, on_failure).
CREATE INDEX events_received ON events (received_at, id);
CREATE INDEX runs_parent ON runs (parent_run_id);
CREATE INDEX runs_origin ON runs (origin_run_id);
