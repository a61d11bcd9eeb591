-- Retention: the pruner reads finished runs by (ended_at, id), a page at a time, and asks of an
-- event whether any run still holds it, and of a run whether an unexpired idempotency key
-- still points at it; these make each of those an index lookup.
DROP INDEX runs_ended;
CREATE INDEX runs_ended ON runs (ended_at, id) WHERE ended_at IS NOT NULL;
CREATE INDEX run_events_event ON run_events (event_id);
CREATE INDEX idempotency_run ON idempotency (run_id);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
