-- A step's name as its code wrote it, where the id is not that name: SDK steps are keyed by the
-- hash of their id (`sha1("charge")`), so the API and the dashboard show this instead.
ALTER TABLE steps ADD COLUMN name TEXT;
