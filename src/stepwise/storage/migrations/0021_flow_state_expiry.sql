-- Rate-limit and throttle windows (flow_state) say when they stop mattering: a rate window
-- when its last start leaves the period, a throttle when its next start time (tat) passes.
-- Retention deletes them then (a window per key value, per user say, otherwise stays forever).
-- Windows stored before this migration have none until the pruner reads them once.
ALTER TABLE flow_state ADD COLUMN expires_at BIGINT;
CREATE INDEX flow_state_expiry ON flow_state (expires_at);
