-- The run search index (storage/search.py writes it, engine/search.py reads it): each run's
-- terms (its event's name, the values of its event's data, the words of its errors), so that
-- a search or an `event_name=` / `event_data=` filter reads one index range, newest run
-- first, instead of every run's event (bench/history.py at a million runs: `event_data=` took
-- 560 ms on SQLite and 1,482 ms on PostgreSQL). Keyed by term for the search; by run for
-- deleting a run's terms with it. On SQLite the table is its primary key's b-tree.
CREATE TABLE run_terms (
    term TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (term, run_id)
){without_rowid};
CREATE INDEX run_terms_run ON run_terms (run_id);
-- Runs stored before this index are indexed when the storage opens, a batch per
-- transaction, from the first run id on (search.backfill); the row goes when it is done.
INSERT INTO settings (name, value) VALUES ('search_backfill_after', '');
