-- When the attempt whose result a step holds started (its last attempt): `started_at` keeps
-- the first attempt's start, and a step that succeeded after retries had no start of its own
-- (the run page could not say how long that attempt took). Set when a later attempt's result
-- replaces an earlier one; NULL for a step attempted once and for steps stored before.
ALTER TABLE steps ADD COLUMN attempt_started_at BIGINT;
