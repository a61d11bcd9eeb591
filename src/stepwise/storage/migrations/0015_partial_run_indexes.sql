-- Most runs have no parent, origin or rerun and have not ended: index only those that have
-- one. A run's row is written three times (queued, started, ended), and each update of an
-- indexed column (its status) adds an entry to every index of the table; entries for NULLs
-- were most of the work of these four. Lookups (`parent_run_id = :id`, `ended_at >= :since`)
-- imply the column is not NULL, so both databases use these indexes as before.
DROP INDEX runs_parent;
DROP INDEX runs_origin;
DROP INDEX runs_rerun;
DROP INDEX runs_ended;
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_origin ON runs (origin_run_id) WHERE origin_run_id IS NOT NULL;
CREATE INDEX runs_rerun ON runs (rerun_of) WHERE rerun_of IS NOT NULL;
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
