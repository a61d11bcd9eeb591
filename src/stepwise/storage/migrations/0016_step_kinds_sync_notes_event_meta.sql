-- What a step is, so that its value is stored as the code gave it and an SDK's memo is built
-- from it: 'run' (a code step's value), 'sleep', 'wait' (the event, or null), 'invoke' (the
-- invoked run's output). NULL: written before this migration, as the executor reported it (an
-- SDK step's value still in the SDK's `{"data": ...}` wrapper). A pending invoke settles
-- after this migration to the plain output, so it is marked now.
ALTER TABLE steps ADD COLUMN kind TEXT;
UPDATE steps SET kind = 'invoke' WHERE status = 'invoking';
-- What the last sync of an SDK app said that this server ignored (unknown fields), as a JSON
-- list of sentences, shown on the Apps page.
ALTER TABLE apps ADD COLUMN warnings TEXT;
-- An SDK event's `meta` (its sessions, `events.sessions_meta`), as JSON: passed on to the SDK
-- functions it starts, whose SDK reads `ctx.sessions` from it.
ALTER TABLE events ADD COLUMN meta TEXT;
