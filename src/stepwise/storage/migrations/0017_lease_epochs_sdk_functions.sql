-- Lease tokens: each take of a run adds one to its epoch, and every write of an execution names
-- the epoch it took (`lease_held` in queries.sql), so an execution from an earlier take, of any
-- worker including the same one, writes nothing.
ALTER TABLE runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
-- Whether a function is an SDK app's (its runs end with Inngest's lifecycle events): a column
-- the SQL reads instead of searching the definition's text. Definitions are compact JSON, where
-- a top-level "url" key is the only way `"url":"` can appear (quotes inside strings are
-- escaped); every sync and worker start writes the column from the definition again.
ALTER TABLE functions ADD COLUMN sdk INTEGER NOT NULL DEFAULT 0;
UPDATE functions SET sdk = 1 WHERE definition LIKE '%"url":"%';
-- A run's first take is the one that makes its epoch 1 (runs-started counts): runs that
-- started before this migration have had theirs.
UPDATE runs SET lease_epoch = 1 WHERE started_at IS NOT NULL;
