-- How many times in a row a run's lease expired with its worker gone (crashed, frozen,
-- killed); reset when an execution ends normally. Too many and the run fails.
ALTER TABLE queue ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0;
-- The event key is no longer generated and stored: keys come from the operator.
DELETE FROM settings WHERE name = 'event_key';
