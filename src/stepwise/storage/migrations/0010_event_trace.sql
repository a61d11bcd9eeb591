-- The W3C traceparent of whatever sent the event (an HTTP client, a run), for tracing.
ALTER TABLE events ADD COLUMN trace TEXT;
