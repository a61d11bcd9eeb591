-- Every query the engine runs, by name. Parameters are :name; a block named `x @postgres`
-- replaces `x` on PostgreSQL. Read this file to reason about concurrency: the lease query and the
-- run guard are the two places where workers meet.

-- name: delete_app_triggers
DELETE FROM function_triggers WHERE app_id = :app_id;

-- name: delete_app_functions
DELETE FROM functions WHERE app_id = :app_id;

-- name: insert_function
-- An upsert: workers and servers that start at once register the same app concurrently.
INSERT INTO functions (app_id, id, definition, updated_at, sdk)
VALUES (:app_id, :id, :definition, :now, :sdk)
ON CONFLICT (app_id, id) DO UPDATE
SET definition = excluded.definition, updated_at = excluded.updated_at, sdk = excluded.sdk;

-- name: insert_trigger
INSERT INTO function_triggers (event_name, app_id, function_id)
VALUES (:event_name, :app_id, :function_id)
ON CONFLICT DO NOTHING;

-- name: list_functions
SELECT app_id, id, definition, updated_at FROM functions ORDER BY app_id, id;

-- name: list_functions_page
-- After (:after_app, :after_id) in (app, id) order: '' and '' for the first page.
SELECT app_id, id, definition, updated_at FROM functions
WHERE app_id > :after_app OR (app_id = :after_app AND id > :after_id)
ORDER BY app_id, id LIMIT :limit;

-- name: insert_event
-- Answers the id when the event is new (an id stored already is a resend: no row).
INSERT INTO events (id, name, data, ts, received_at, trace, meta)
VALUES (:id, :name, :data, :ts, :now, :trace, :meta)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: insert_events
-- Many events in one statement: :ids, :names, :datas, :ts, :traces and :metas are parallel
-- lists.
-- Answers the ids of those not stored yet (an id stored already, or repeated in the lists,
-- is a resend: its first occurrence is the one stored). SQLite reads the lists by position
-- (json_extract keeps a parsed list: no join of one list with another).
INSERT INTO events (id, name, data, ts, received_at, trace, meta)
SELECT i.value, json_extract(:names, '$[' || i.key || ']'),
       json_extract(:datas, '$[' || i.key || ']'), json_extract(:ts, '$[' || i.key || ']'),
       :now, json_extract(:traces, '$[' || i.key || ']'),
       json_extract(:metas, '$[' || i.key || ']')
FROM json_each(:ids) i
WHERE true  -- SQLite: the ON CONFLICT below belongs to the INSERT, not to the FROM
ORDER BY i.key
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: insert_events @postgres
INSERT INTO events (id, name, data, ts, received_at, trace, meta)
SELECT e.id, e.name, e.data, e.ts, :now, e.trace, e.meta
FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[]), CAST(:datas AS text[]),
            CAST(:ts AS bigint[]), CAST(:traces AS text[]), CAST(:metas AS text[]))
     WITH ORDINALITY AS e(id, name, data, ts, trace, meta, position)
ORDER BY e.position
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: functions_for_events
-- The functions triggered by each of the event names :names.
SELECT t.event_name, t.app_id, t.function_id, f.definition FROM function_triggers t
JOIN functions f ON f.app_id = t.app_id AND f.id = t.function_id
WHERE t.event_name IN (SELECT value FROM json_each(:names));

-- name: functions_for_events @postgres
SELECT t.event_name, t.app_id, t.function_id, f.definition FROM function_triggers t
JOIN functions f ON f.app_id = t.app_id AND f.id = t.function_id
WHERE t.event_name = ANY (CAST(:names AS text[]));

-- name: names_waited
-- Which of the event names :names some run waits for.
SELECT n.value AS name FROM json_each(:names) AS n
WHERE EXISTS (SELECT 1 FROM waits w WHERE w.event_name = n.value);

-- name: names_waited @postgres
SELECT n.name FROM unnest(CAST(:names AS text[])) AS n(name)
WHERE EXISTS (SELECT 1 FROM waits w WHERE w.event_name = n.name);

-- name: ingest_routed @postgres
-- wakes: if :run_ids
-- (queued runs, when the routes held)
-- The common ingest in one statement (sent with the COMMIT): the events, and the runs the
-- caller routed them to from its cache of routes (the run lists, one per new event and
-- function), only if that cache is still true: the functions the names :route_names trigger are
-- :routes (`ingest.Routes.fingerprint`: each length-prefixed event name, app and function
-- and the SHA-256 of its definition, sorted bytewise, joined with commas)
-- and no run waits for any of those names. If not, nothing is written (`ok` false) and the
-- caller ingests the general way. Runs are inserted for the events stored here only (an id
-- already stored is a resend).
WITH chk AS (
  SELECT coalesce((SELECT string_agg(length(t.event_name) || ':' || t.event_name || ' '
                                       || length(t.app_id) || ':' || t.app_id || ' '
                                       || length(t.function_id) || ':' || t.function_id
                                       || ' '
                                       || encode(sha256(convert_to(f.definition, 'UTF8')),
                                                 'hex'), ','
                                     ORDER BY t.event_name COLLATE "C", t.app_id COLLATE "C",
                                              t.function_id COLLATE "C")
                   FROM function_triggers t
                   JOIN functions f ON f.app_id = t.app_id AND f.id = t.function_id
                   WHERE t.event_name = ANY (CAST(:route_names AS text[]))), '') = :routes
         AND NOT EXISTS (SELECT 1 FROM waits w
                         WHERE w.event_name = ANY (CAST(:route_names AS text[]))) AS ok),
ev AS (
  INSERT INTO events (id, name, data, ts, received_at, trace, meta)
  SELECT e.id, e.name, e.data, e.ts, :now, e.trace, e.meta
  FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[]), CAST(:datas AS text[]),
              CAST(:ts AS bigint[]), CAST(:traces AS text[]), CAST(:metas AS text[]))
       WITH ORDINALITY AS e(id, name, data, ts, trace, meta, position)
  WHERE (SELECT ok FROM chk)
  ORDER BY e.position
  ON CONFLICT (id) DO NOTHING
  RETURNING id),
r AS (
  SELECT * FROM unnest(CAST(:run_ids AS text[]), CAST(:run_apps AS text[]),
                       CAST(:run_functions AS text[]), CAST(:run_events AS text[]),
                       CAST(:run_available_ats AS bigint[]))
       AS r(id, app_id, function_id, event_id, available_at)
  WHERE r.event_id IN (SELECT id FROM ev)),
runs_in AS (
  INSERT INTO runs (id, app_id, function_id, event_id, status, created_at)
  SELECT id, app_id, function_id, event_id, {run:queued}, :now FROM r),
queue_in AS (
  INSERT INTO queue (run_id, app_id, function_id, available_at, priority)
  SELECT id, app_id, function_id, available_at, 0 FROM r),
terms_in AS (
  INSERT INTO run_terms (term, run_id)
  SELECT substr(t.value, strpos(t.value, ' ') + 1), split_part(t.value, ' ', 1)
  FROM unnest(CAST(:run_terms AS text[])) AS t(value)
  WHERE split_part(t.value, ' ', 1) IN (SELECT id FROM r)
  ON CONFLICT DO NOTHING)
SELECT (SELECT ok FROM chk) AS ok;

-- name: insert_run
INSERT INTO runs (id, app_id, function_id, event_id, status, origin_run_id, parent_run_id,
                  parent_step_id, created_at)
VALUES (:id, :app_id, :function_id, :event_id, {run:queued}, :origin_run_id, :parent_run_id,
        :parent_step_id, :now);

-- name: enqueue
-- wakes: always
-- (a queued run)
INSERT INTO queue (run_id, app_id, function_id, available_at, priority)
VALUES (:run_id, :app_id, :function_id, :available_at, :priority);

-- name: insert_runs
-- wakes: if :ids
-- (queued runs)
-- Many runs without flow control, queued: :ids, :app_ids, :function_ids, :event_ids and
-- :available_ats are parallel lists. Two statements on SQLite.
INSERT INTO runs (id, app_id, function_id, event_id, status, created_at)
SELECT i.value, json_extract(:app_ids, '$[' || i.key || ']'),
       json_extract(:function_ids, '$[' || i.key || ']'),
       json_extract(:event_ids, '$[' || i.key || ']'), {run:queued}, :now
FROM json_each(:ids) i;
INSERT INTO queue (run_id, app_id, function_id, available_at, priority)
SELECT i.value, json_extract(:app_ids, '$[' || i.key || ']'),
       json_extract(:function_ids, '$[' || i.key || ']'),
       json_extract(:available_ats, '$[' || i.key || ']'), 0
FROM json_each(:ids) i;

-- name: insert_runs @postgres
-- wakes: if :ids
-- (queued runs)
WITH r AS (
  SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:app_ids AS text[]),
                       CAST(:function_ids AS text[]), CAST(:event_ids AS text[]),
                       CAST(:available_ats AS bigint[]))
       AS r(id, app_id, function_id, event_id, available_at)),
runs_in AS (
  INSERT INTO runs (id, app_id, function_id, event_id, status, created_at)
  SELECT id, app_id, function_id, event_id, {run:queued}, :now FROM r)
INSERT INTO queue (run_id, app_id, function_id, available_at, priority)
SELECT id, app_id, function_id, available_at, 0 FROM r;

-- name: insert_run_terms
-- The search index (storage/search.py): :run_terms is a list of `run_id term` (a run id has
-- no space). A term a run has already is kept once.
INSERT INTO run_terms (term, run_id)
SELECT substr(value, instr(value, ' ') + 1), substr(value, 1, instr(value, ' ') - 1)
FROM json_each(:run_terms)
WHERE true  -- SQLite: the ON CONFLICT below belongs to the INSERT, not to the FROM
ON CONFLICT DO NOTHING;

-- name: insert_run_terms @postgres
INSERT INTO run_terms (term, run_id)
SELECT substr(t.value, strpos(t.value, ' ') + 1), split_part(t.value, ' ', 1)
FROM unnest(CAST(:run_terms AS text[])) AS t(value)
ON CONFLICT DO NOTHING;

-- name: delete_event_terms
-- A run's search terms from its event (a debounced run's event was replaced).
DELETE FROM run_terms WHERE run_id = :run_id AND (term LIKE 'e:%' OR term LIKE 'd%');

-- name: search_plan
-- Nothing to do on SQLite, which plans every statement with its values.
SELECT 1 AS planned;

-- name: search_plan @postgres
-- For a search's transaction: plan each statement with its values. How many runs a term has
-- ranges from one to most of them, so the generic plan PostgreSQL keeps for a statement run
-- five times (psycopg prepares it) fits some and not others (a million runs of
-- bench/history.py: a data field and an error word together took 28 ms with the generic
-- plan, 5.8 ms planned with the values).
SELECT set_config('plan_cache_mode', 'force_custom_plan', true) AS planned;

-- name: search_function_ids
-- The search's vocabulary (engine/search.py): a word that is one of these names a function...
SELECT DISTINCT id FROM functions;

-- name: search_event_names
-- ... or an event name a function is triggered by.
SELECT DISTINCT event_name FROM function_triggers;

-- name: run_with_id_prefix
SELECT id FROM runs WHERE id >= :low AND id < :high LIMIT 1;

-- name: any_run_term
-- Whether any run has one of the terms :ids (the markers of events with values left out).
SELECT 1 AS found FROM run_terms WHERE term IN {query:in_ids} LIMIT 1;

-- name: count_term_runs
-- How many runs have :term, counted up to :limit (to pick the rarest term of a search).
SELECT COUNT(*) AS n FROM (SELECT 1 FROM run_terms WHERE term = :term LIMIT :limit) x;

-- name: runs_to_index
-- The search index's backfill (storage/search.py): runs after :after in id order, with what
-- their terms are made of.
SELECT r.id, r.error, e.name AS event_name, e.data AS event_data
FROM runs r LEFT JOIN events e ON e.id = r.event_id
WHERE r.id > :after ORDER BY r.id LIMIT :limit;

-- name: failures_to_index
SELECT run_id, error FROM failures WHERE run_id > :after AND run_id <= :last;

-- name: lease_candidates
-- Priority P (seconds) ranks a run as if it had been queued P seconds earlier. A run with a
-- lease_owner here is being taken over: its lease expired. :functions (a JSON list) are the
-- functions the worker serves: runs of others wait for a worker that has them.
SELECT run_id, keyed, lease_owner FROM queue
WHERE app_id = :app_id AND available_at <= :now
  AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
  AND function_id IN (SELECT value FROM json_each(:functions))
ORDER BY available_at - priority * 1000, run_id
LIMIT :window;

-- name: lease_plan
-- Nothing to do on SQLite, whose planner takes queue_order for lease_candidates by itself.
SELECT 1 AS planned;

-- name: lease_plan @postgres
-- For the lease transaction: read due runs in queue_order's order instead of sorting them all.
-- Without statistics (autovacuum off, or a queue that grew since the last ANALYZE) the
-- planner would sort every due run of the app on each lease: 4.5 ms for 5,000.
SELECT set_config('enable_sort', 'off', true) AS planned;

-- name: lease_candidates @postgres
SELECT run_id, keyed, lease_owner FROM queue
WHERE app_id = :app_id AND available_at <= :now
  AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
  AND function_id = ANY (CAST(:functions AS text[]))
ORDER BY available_at - priority * 1000, run_id
LIMIT :window
FOR UPDATE SKIP LOCKED;

-- name: take
-- :ids is a list of run ids: a JSON array on SQLite (read with json_each), an array on
-- PostgreSQL, whose planner then sees how many there are. A debounce or a batch closes as
-- its run starts. Two statements on SQLite.
UPDATE queue SET lease_owner = :owner, lease_expires_at = :until, nudged = 0
WHERE run_id IN (SELECT value FROM json_each(:ids));
DELETE FROM pending_groups WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: take @postgres
WITH closed AS (DELETE FROM pending_groups WHERE run_id = ANY (CAST(:ids AS text[])))
UPDATE queue SET lease_owner = :owner, lease_expires_at = :until, nudged = 0
WHERE run_id = ANY (CAST(:ids AS text[]));

-- name: run_start
-- (A fragment.) A run starts executing: status running, started_at on a first start, and one
-- more take (its lease epoch: `Lease.epoch`). Every lease writes it through start_runs or
-- lease_plain, which share it.
started_at = COALESCE(started_at, :now), lease_epoch = lease_epoch + 1,
status = CASE WHEN status IN ({unfinished_runs}) THEN {run:running} ELSE status END

-- name: started_run
-- (A fragment.) A just-started run as executing it needs, with its take's epoch and whether
-- this is its first take (for runs-started counts; runs started before epochs were counted
-- got epoch 1 in migration 0017).
id, app_id, function_id, event_id, status, output, error, attempts, retry, origin_run_id,
parent_run_id, parent_step_id, rerun_of, created_at, started_at, ended_at, lease_epoch,
lease_epoch = 1 AS first_start

-- name: start_runs
-- The runs of :ids start executing, answered as they are then.
UPDATE runs SET {query:run_start}
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING {query:started_run};

-- name: start_runs @postgres
UPDATE runs SET {query:run_start}
WHERE id = ANY (CAST(:ids AS text[]))
RETURNING {query:started_run};

-- name: lease_plain @postgres
-- The common lease in one statement (with its COMMIT, one round trip): when none of the
-- first :limit due runs is keyed (a concurrency or throttle key to count) or taken over (an
-- expired lease to count), and no cron tick or deadline of the app is due, take them and
-- answer what executing them needs (the runs as `start_runs` leaves them, their events and
-- steps, as JSON) and when the app has something to do next (saving `next_due` its round
-- trip). `plain` false: nothing was taken; the caller leases the general way.
WITH cand AS ({query:lease_candidates}),  -- its window: the limit
plain AS (
  SELECT NOT EXISTS (SELECT 1 FROM cand WHERE keyed <> 0 OR lease_owner IS NOT NULL)
     AND NOT EXISTS (SELECT 1 FROM schedules WHERE app_id = :app_id AND next_at <= :now)
     AND NOT EXISTS (SELECT 1 FROM deadlines WHERE app_id = :app_id AND at <= :now) AS ok),
pick AS (SELECT cand.run_id FROM cand, plain WHERE plain.ok),
closed AS (DELETE FROM pending_groups WHERE run_id IN (SELECT run_id FROM pick)),
taken AS (
  UPDATE queue SET lease_owner = :owner, lease_expires_at = :until, nudged = 0
  WHERE run_id IN (SELECT run_id FROM pick) RETURNING run_id),
started AS (
  UPDATE runs SET {query:run_start}
  WHERE id IN (SELECT run_id FROM taken)
  RETURNING {query:started_run}),
events AS (
  SELECT r.id AS run_id, NULL::integer AS position, e.id, e.name, e.data, e.ts,
         e.received_at, e.trace, e.meta
  FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id IN (SELECT run_id FROM pick)
  UNION ALL
  SELECT b.run_id, b.position, e.id, e.name, e.data, e.ts, e.received_at, e.trace, e.meta
  FROM run_events b JOIN events e ON e.id = b.event_id
  WHERE b.run_id IN (SELECT run_id FROM pick))
SELECT (SELECT ok FROM plain) AS plain,
       (SELECT array_agg(run_id) FROM pick) AS ids,  -- in lease order
       (SELECT json_agg(started) FROM started) AS runs,
       (SELECT json_agg(events) FROM events) AS events,
       (SELECT json_agg(s ORDER BY s.run_id, s.seq) FROM (
          SELECT run_id, id, seq, status, attempts, output, error, started_at, ended_at, name,
                 kind
          FROM steps WHERE run_id IN (SELECT run_id FROM pick)) s) AS steps,
       -- what `next_due` answers once this lease committed (NULL: nothing ahead), read
       -- only when fewer than :limit were taken (else the caller leases again at once)
       CASE WHEN (SELECT count(*) FROM pick) < :limit THEN LEAST((SELECT available_at FROM queue
              WHERE app_id = :app_id AND lease_owner IS NULL
                AND run_id NOT IN (SELECT run_id FROM pick)
              ORDER BY available_at LIMIT 1),
             (SELECT lease_expires_at FROM queue
              WHERE app_id = :app_id AND lease_expires_at IS NOT NULL
              ORDER BY lease_expires_at LIMIT 1),
             CASE WHEN EXISTS (SELECT 1 FROM pick) THEN :until END,
             (SELECT MIN(next_at) FROM schedules WHERE app_id = :app_id),
             (SELECT MIN(at) FROM deadlines WHERE app_id = :app_id)) END AS next_due;

-- name: run_keys
SELECT key, lim FROM queue_keys WHERE run_id = :run_id;

-- name: lock_key
SELECT 1 AS locked;

-- name: lock_key @postgres
SELECT pg_advisory_xact_lock(hashtext(:key)) IS NULL AS locked;

-- name: inflight
SELECT COUNT(*) AS n FROM queue_keys k JOIN queue q ON q.run_id = k.run_id
WHERE k.key = :key AND q.lease_owner IS NOT NULL AND q.lease_expires_at > :now;

-- name: insert_queue_key
INSERT INTO queue_keys (run_id, key, lim) VALUES (:run_id, :key, :lim)
ON CONFLICT (run_id, key) DO NOTHING;

-- name: mark_keyed
UPDATE queue SET keyed = 1 WHERE run_id = :run_id;

-- name: next_due
-- Walks the (app_id, available_at) index to the first unleased run: cheap with millions parked.
SELECT available_at AS due FROM queue
WHERE app_id = :app_id AND lease_owner IS NULL
ORDER BY available_at LIMIT 1;

-- name: next_lease_expiry
SELECT lease_expires_at AS due FROM queue
WHERE app_id = :app_id AND lease_expires_at IS NOT NULL
ORDER BY lease_expires_at LIMIT 1;

-- name: renew_lease
UPDATE queue SET lease_expires_at = :until WHERE run_id = :run_id AND {query:lease_held};

-- name: lease_held
-- (A fragment.) The fence of every write an execution makes (`Lease`): the run is still leased
-- to :owner by the take of epoch :epoch, and not cancelled. A stale execution, of another worker
-- or of the same one, fails it: every take adds one to the epoch.
EXISTS (SELECT 1 FROM runs fenced_run JOIN queue fenced_queue
                 ON fenced_queue.run_id = fenced_run.id
        WHERE fenced_run.id = :run_id AND fenced_run.lease_epoch = :epoch
          AND fenced_queue.lease_owner = :owner AND fenced_run.status <> {run:cancelled})

-- name: run_guard
-- The guard of a transaction that applies an execution's outcomes: a row (the run's retry
-- count) only while the lease is held.
SELECT retry FROM runs WHERE id = :run_id AND {query:lease_held};

-- name: run_guard @postgres
-- Also locks the run's queue row until the transaction ends, so no other worker can take it
-- over between this check and the writes that follow (a take skips locked rows).
SELECT (SELECT retry FROM runs WHERE id = :run_id) AS retry FROM queue
WHERE run_id = :run_id AND {query:lease_held}
FOR UPDATE;

-- name: run_fence
-- Why a guard refused: the run's status and who holds it now.
SELECT r.status, r.lease_epoch, q.lease_owner FROM runs r LEFT JOIN queue q ON q.run_id = r.id
WHERE r.id = :run_id;

-- name: get_run
SELECT id, app_id, function_id, event_id, status, output, error, attempts, retry,
       origin_run_id, parent_run_id, parent_step_id, rerun_of, created_at, started_at, ended_at,
       (SELECT lease_owner FROM queue WHERE queue.run_id = runs.id) AS lease_owner
FROM runs WHERE id = :run_id;

-- name: get_event
SELECT id, name, data, ts, received_at, trace, meta FROM events WHERE id = :id;

-- name: get_steps
-- A run's steps as an executor reads them (as leasing does: steps_of_runs).
SELECT id, seq, status, attempts, output, error, started_at, ended_at, name, kind
FROM steps WHERE run_id = :run_id ORDER BY seq;

-- name: steps_of_run_detail
-- A run's steps as the API shows them: also when each one's last attempt started.
SELECT id, seq, status, attempts, output, error, started_at, ended_at, name, kind,
       attempt_started_at
FROM steps WHERE run_id = :run_id ORDER BY seq;

-- name: step_kept
-- (A fragment.) How a step's result is stored, by every statement that stores one: a completed
-- or failed step is never overwritten, and an attempt reported twice is stored once.
ON CONFLICT (run_id, id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, ended_at = excluded.ended_at,
    attempt_started_at = excluded.started_at
WHERE steps.status NOT IN ({final_steps}) AND steps.attempts < excluded.attempts

-- name: save_step
-- A completed or failed step is never overwritten, and an attempt reported twice is stored once.
-- Answers a row when it stored the step (also when sent with other statements, where no row
-- count comes back).
INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at, ended_at, name,
                   kind)
VALUES (:run_id, :id, :seq, :status, :attempts, :output, :error, :started_at, :ended_at, :name,
        'run')
{query:step_kept}
RETURNING 1 AS saved;

-- name: guarded_save_step
-- A completed step of a run `owner` still leases, stored with the run's retry count reset (a
-- step's whole write path: fencing and storing); no row when it was not stored (the lease is
-- lost, the run cancelled, or a final result was stored first), and the caller then finds out
-- which. Two statements on SQLite: the reset follows when the first stored the step
-- (`changes()`: the rows the previous statement wrote); no RETURNING, which costs a third of
-- the statement: SQLite's `write_statement` answers a row when the first one wrote a row.
INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at, ended_at, name,
                   kind)
SELECT :run_id, :id, :seq, :status, :attempts, :output, :error, :started_at, :ended_at, :name,
       'run'
WHERE {query:lease_held}
{query:step_kept};
UPDATE runs SET retry = 0 WHERE id = :run_id AND retry <> 0 AND changes() > 0;

-- name: guarded_save_step @postgres
-- The same, also resetting the run's retry count, so it is one round trip without BEGIN.
WITH saved AS (
    INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at, ended_at,
                       name, kind)
    SELECT :run_id::text, :id::text, :seq::integer, :status::text, :attempts::integer,
           :output::text, :error::text, :started_at::bigint, :ended_at::bigint, :name::text, 'run'
    WHERE {query:lease_held}
    {query:step_kept}
    RETURNING 1),
reset AS (UPDATE runs SET retry = 0
          WHERE id = :run_id AND retry <> 0 AND EXISTS (SELECT 1 FROM saved))
SELECT 1 AS saved, 0 AS retry FROM saved;

-- name: insert_step
-- A pending step (sleep, wait, invoke: its kind) is created once; reporting it again changes
-- nothing.
INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at, ended_at, name,
                   kind)
VALUES (:run_id, :id, :seq, :status, :attempts, :output, :error, :started_at, :ended_at, :name,
        :kind)
ON CONFLICT (run_id, id) DO NOTHING;

-- name: get_step
SELECT id, seq, status, attempts, output, error, started_at, ended_at, kind
FROM steps WHERE run_id = :run_id AND id = :id;

-- name: pending_steps
SELECT status, ended_at FROM steps WHERE run_id = :run_id AND status IN ({pending_steps});

-- name: events_of_runs
-- What executing the just-leased runs of :ids needs besides the runs (`runs.states`), read in
-- the lease's transaction: their events (position NULL) and a batch's events (position 0,
-- 1, ...), and their stored steps.
SELECT r.id AS run_id, NULL AS position, e.id, e.name, e.data, e.ts, e.received_at, e.trace, e.meta
FROM runs r JOIN events e ON e.id = r.event_id
WHERE r.id IN (SELECT value FROM json_each(:ids))
UNION ALL
SELECT b.run_id, b.position, e.id, e.name, e.data, e.ts, e.received_at, e.trace, e.meta
FROM run_events b JOIN events e ON e.id = b.event_id
WHERE b.run_id IN (SELECT value FROM json_each(:ids));

-- name: events_of_runs @postgres
SELECT r.id AS run_id, NULL AS position, e.id, e.name, e.data, e.ts, e.received_at, e.trace, e.meta
FROM runs r JOIN events e ON e.id = r.event_id
WHERE r.id = ANY (CAST(:ids AS text[]))
UNION ALL
SELECT b.run_id, b.position, e.id, e.name, e.data, e.ts, e.received_at, e.trace, e.meta
FROM run_events b JOIN events e ON e.id = b.event_id
WHERE b.run_id = ANY (CAST(:ids AS text[]));

-- name: steps_of_runs
SELECT run_id, id, seq, status, attempts, output, error, started_at, ended_at, name, kind
FROM steps WHERE run_id IN (SELECT value FROM json_each(:ids)) ORDER BY run_id, seq;

-- name: steps_of_runs @postgres
SELECT run_id, id, seq, status, attempts, output, error, started_at, ended_at, name, kind
FROM steps WHERE run_id = ANY (CAST(:ids AS text[]))
ORDER BY run_id, seq;

-- name: due_timed_steps
-- Sleeps, waits and invokes of just-leased runs whose time has come.
SELECT run_id, id, status, ended_at FROM steps
WHERE run_id IN (SELECT value FROM json_each(:ids)) AND status IN ({timed_steps})
  AND ended_at <= :now;

-- name: due_timed_steps @postgres
SELECT run_id, id, status, ended_at FROM steps
WHERE run_id = ANY (CAST(:ids AS text[]))
  AND status IN ({timed_steps}) AND ended_at <= :now;

-- name: set_retry
UPDATE runs SET retry = :retry WHERE id = :run_id;

-- name: requeue
-- wakes: always
-- (a run handed back is due)
UPDATE queue SET available_at = :available_at, lease_owner = NULL, lease_expires_at = NULL,
                 nudged = 0, takeovers = 0
WHERE run_id = :run_id;

-- name: park
-- wakes: always
-- (a concurrency slot is free; a run nudged while it executed is due now)
-- Hand a run back until :available_at, unless something woke it while it executed.
UPDATE queue SET available_at = CASE WHEN nudged = 1 THEN :now ELSE :available_at END,
                 lease_owner = NULL, lease_expires_at = NULL, nudged = 0, takeovers = 0
WHERE run_id = :run_id;

-- name: count_takeover
UPDATE queue SET takeovers = takeovers + 1 WHERE run_id = :run_id RETURNING takeovers;

-- name: nudge
-- wakes: always
-- (a parked run is due now)
UPDATE queue SET available_at = CASE WHEN available_at > :now THEN :now ELSE available_at END,
                 nudged = 1
WHERE run_id = :run_id;

-- name: wake_run_status
UPDATE runs SET status = {run:queued} WHERE id = :run_id AND status IN ({parked_runs});

-- name: set_run_status
UPDATE runs SET status = :status WHERE id = :run_id;

-- name: run_end
-- (A fragment.) A run reaches its final status :run_status, by every statement that ends one.
status = :run_status, output = :run_output, error = :run_error, ended_at = :now, retry = 0

-- name: finish_run
UPDATE runs SET {query:run_end}
WHERE id = :run_id
RETURNING id, app_id, function_id, event_id, status, output, error, attempts, retry,
          origin_run_id, parent_run_id, parent_step_id, rerun_of, created_at, started_at,
          ended_at;

-- name: finish_leased_run
-- finish_run fenced by the lease (the run's guard in the same statement): no row when the
-- lease is no longer held or the run was cancelled; the caller then rolls back and finds out which.
UPDATE runs SET {query:run_end}
WHERE id = :run_id AND {query:lease_held}
RETURNING id, app_id, function_id, event_id, status, output, error, attempts, retry,
          origin_run_id, parent_run_id, parent_step_id, rerun_of, created_at, started_at,
          ended_at;

-- name: finish_cleanup
-- wakes: if wake
-- A finished run: drop everything that could still schedule it. `wake`: it held concurrency
-- keys (other runs may wait for its slot). It follows finish_run in one round trip, so
-- it acts only when the run did finish (is no longer unfinished): a fenced finish refused for
-- a lost lease leaves the new holder's queue row alone. Several statements: SQLite runs them
-- in order and answers the first one's rows.
SELECT count(*) > 0 AS wake FROM queue_keys WHERE run_id = :run_id;
DELETE FROM queue WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});
DELETE FROM queue_keys WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});
DELETE FROM waits WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});
DELETE FROM deadlines WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});
DELETE FROM pending_groups WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});
DELETE FROM singletons WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});
DELETE FROM signal_waits WHERE run_id = :run_id
  AND (SELECT status FROM runs WHERE id = :run_id) NOT IN ({unfinished_runs});

-- name: run_cleanup @postgres
-- (A fragment: CTEs after one named `finished` that answers the finished run's id, if any.)
-- What a finished run drops on PostgreSQL, for finish_cleanup and complete_leased_run; `keys`
-- answers a row per concurrency key it held.
queue_row AS (DELETE FROM queue WHERE run_id = (SELECT id FROM finished)),
keys AS (DELETE FROM queue_keys WHERE run_id = (SELECT id FROM finished) RETURNING 1),
run_waits AS (DELETE FROM waits WHERE run_id = (SELECT id FROM finished)),
run_deadlines AS (DELETE FROM deadlines WHERE run_id = (SELECT id FROM finished)),
run_groups AS (DELETE FROM pending_groups WHERE run_id = (SELECT id FROM finished)),
run_singletons AS (DELETE FROM singletons WHERE run_id = (SELECT id FROM finished)),
run_signals AS (DELETE FROM signal_waits WHERE run_id = (SELECT id FROM finished))

-- name: finish_cleanup @postgres
-- wakes: if wake
WITH finished AS (SELECT id FROM runs WHERE id = :run_id AND status NOT IN ({unfinished_runs})),
{query:run_cleanup}
SELECT EXISTS (SELECT FROM keys) AS wake;

-- name: complete_leased_run @postgres
-- wakes: if wake
-- (a concurrency slot was freed)
-- The common end of an execution in one statement: its last step (when :id is not null; the
-- step's columns as save_step takes them) stored and the run completed with :run_output and
-- cleaned up as finish_leased_run and finish_cleanup do, only for a run `owner` leases that
-- nothing else must hear of its end (no invoking parent, not an SDK function's, whose end is
-- an event) and only if the step is stored by this statement. Otherwise it writes nothing
-- and answers no row: the caller then completes the run the general way. `wake`: it freed
-- concurrency keys (runs may wait for the slot).
WITH eligible AS (
    SELECT r.id FROM runs r
    JOIN functions f ON f.app_id = r.app_id AND f.id = r.function_id
    WHERE r.id = :run_id AND {query:lease_held} AND r.parent_run_id IS NULL AND f.sdk = 0),
saved AS (
    INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at, ended_at,
                       name, kind)
    SELECT eligible.id, :id::text, :seq::integer, :status::text, :attempts::integer,
           :output::text, :error::text, :started_at::bigint, :ended_at::bigint, :name::text, 'run'
    FROM eligible WHERE :id::text IS NOT NULL
    {query:step_kept}
    RETURNING 1),
finished AS (
    UPDATE runs SET {query:run_end}
    WHERE id = (SELECT id FROM eligible) AND (:id::text IS NULL OR EXISTS (SELECT FROM saved))
    RETURNING id),
{query:run_cleanup}
SELECT EXISTS (SELECT FROM keys) AS wake FROM finished;

-- name: replay_run
UPDATE runs SET status = {run:queued}, output = NULL, error = NULL, ended_at = NULL, retry = 0,
                attempts = attempts + 1
WHERE id = :run_id;

-- name: delete_failed_steps
DELETE FROM steps WHERE run_id = :run_id AND status <> {step:completed};

-- name: insert_wait
INSERT INTO waits (run_id, step_id, event_name, match_path, match_key, if_expr, trigger_event,
                   expires_at, created_at)
VALUES (:run_id, :step_id, :event_name, :match_path, :match_key, :if_expr, :trigger_event,
        :expires_at, :now)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: any_wait
SELECT 1 AS found FROM waits WHERE event_name = :name LIMIT 1;

-- name: wait_paths
SELECT DISTINCT match_path FROM waits WHERE event_name = :name;

-- name: waits_by_key
-- (A wait past its expiry takes no event: a step's timed out, a cancel_on's timeout passed.)
SELECT run_id, step_id, if_expr, trigger_event, kind FROM waits
WHERE event_name = :name AND match_path = :path AND match_key = :key AND expires_at > :now;

-- name: waits_without_match
SELECT run_id, step_id, if_expr, trigger_event, kind FROM waits
WHERE event_name = :name AND match_path IS NULL AND expires_at > :now;

-- name: delete_wait
DELETE FROM waits WHERE run_id = :run_id AND step_id = :step_id;

-- name: end_timers_now
-- A run's sleeps and waits end now; a step waiting out its retry backoff is tried now.
-- (`nudge` then makes the run due now, which also retries a body waiting out its backoff.)
UPDATE steps SET ended_at = :now
WHERE run_id = :run_id AND status IN ({step:sleeping}, {step:waiting}, {step:retrying});

-- name: resolve_step
UPDATE steps SET status = :status, output = :output, error = :error, ended_at = :now
WHERE run_id = :run_id AND id = :id AND status = :expected;

-- name: insert_schedule
-- wakes: always
-- (a new schedule may be due sooner than workers thought)
INSERT INTO schedules (app_id, function_id, cron, tz, next_at)
VALUES (:app_id, :function_id, :cron, :tz, :next_at)
ON CONFLICT (app_id, function_id, cron, tz) DO NOTHING;

-- name: app_schedules
SELECT function_id, cron, tz FROM schedules WHERE app_id = :app_id;

-- name: delete_schedule
DELETE FROM schedules
WHERE app_id = :app_id AND function_id = :function_id AND cron = :cron AND tz = :tz;

-- name: due_schedules
SELECT function_id, cron, tz, next_at FROM schedules
WHERE app_id = :app_id AND next_at <= :now;

-- name: due_schedules @postgres
SELECT function_id, cron, tz, next_at FROM schedules
WHERE app_id = :app_id AND next_at <= :now
FOR UPDATE SKIP LOCKED;

-- name: set_schedule_next
UPDATE schedules SET next_at = :next_at
WHERE app_id = :app_id AND function_id = :function_id AND cron = :cron AND tz = :tz;

-- name: next_schedule
SELECT MIN(next_at) AS due FROM schedules WHERE app_id = :app_id;

-- name: upsert_app
INSERT INTO apps (id, url, sdk, framework, synced_at, changed_at, warnings)
VALUES (:id, :url, :sdk, :framework, :now, :now, :warnings)
ON CONFLICT (id) DO UPDATE SET url = excluded.url, sdk = excluded.sdk,
  framework = excluded.framework, synced_at = excluded.synced_at, warnings = excluded.warnings,
  changed_at = CASE WHEN :changed = 1 THEN excluded.changed_at ELSE apps.changed_at END;

-- name: list_apps
SELECT id, url, sdk, framework, synced_at, changed_at, warnings FROM apps ORDER BY id;

-- name: app_definitions
SELECT id, definition FROM functions WHERE app_id = :app_id ORDER BY id;

-- name: definition_of_run
SELECT f.definition, f.sdk FROM runs r JOIN functions f ON f.app_id = r.app_id AND f.id = r.function_id
WHERE r.id = :run_id;

-- name: checkpoint_target
-- What an SDK's checkpoint needs of its run: its function, whether that is an SDK function
-- and the run executes, and how many of its steps have ended (the memo's order places the
-- checkpointed steps after them), without reading any step's value.
SELECT r.function_id, r.status, f.sdk,
       (SELECT count(*) FROM steps s WHERE s.run_id = r.id
          AND s.status IN ({step:completed}, {step:failed})) AS ended
FROM runs r JOIN functions f ON f.app_id = r.app_id AND f.id = r.function_id
WHERE r.id = :run_id;

-- name: retrying_steps
SELECT id, attempts FROM steps WHERE run_id = :run_id AND status = {step:retrying};

-- name: event_of_run
SELECT e.id, e.name, e.data, e.ts, e.received_at, e.trace, e.meta
FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = :run_id;

-- name: get_function
SELECT definition FROM functions WHERE app_id = :app_id AND id = :id;

-- name: functions_with_id
SELECT app_id, definition FROM functions WHERE id = :id ORDER BY app_id LIMIT 2;

-- name: insert_skipped_run
INSERT INTO runs (id, app_id, function_id, event_id, status, error, created_at, ended_at)
VALUES (:id, :app_id, :function_id, :event_id, {run:skipped}, :error, :now, :now);

-- name: init_flow_state
INSERT INTO flow_state (key, state) VALUES (:key, '[]') ON CONFLICT (key) DO NOTHING;

-- name: get_flow_state
SELECT state FROM flow_state WHERE key = :key;

-- name: get_flow_state @postgres
SELECT state FROM flow_state WHERE key = :key FOR UPDATE;

-- name: set_flow_state
-- :expires_at: when the window stops mattering (retention deletes it then).
UPDATE flow_state SET state = :state, expires_at = :expires_at WHERE key = :key;

-- name: get_group
SELECT run_id, size, first_at FROM pending_groups WHERE key = :key;

-- name: get_group @postgres
SELECT run_id, size, first_at FROM pending_groups WHERE key = :key FOR UPDATE;

-- name: insert_group
INSERT INTO pending_groups (key, run_id, size, first_at) VALUES (:key, :run_id, 1, :now);

-- name: grow_group
UPDATE pending_groups SET size = size + 1 WHERE key = :key;

-- name: delete_group
DELETE FROM pending_groups WHERE key = :key;

-- name: postpone_unleased
UPDATE queue SET available_at = :available_at
WHERE run_id = :run_id AND lease_owner IS NULL;

-- name: release_now
-- wakes: always
-- (a full batch is due now)
UPDATE queue SET available_at = :now WHERE run_id = :run_id AND lease_owner IS NULL;

-- name: set_run_event
UPDATE runs SET event_id = :event_id WHERE id = :run_id;

-- name: insert_run_event
INSERT INTO run_events (run_id, position, event_id) VALUES (:run_id, :position, :event_id);

-- name: get_run_events
SELECT e.id, e.name, e.data, e.ts, e.meta FROM run_events r JOIN events e ON e.id = r.event_id
WHERE r.run_id = :run_id ORDER BY r.position;

-- name: get_idempotency
SELECT run_id, expires_at FROM idempotency WHERE key = :key;

-- name: upsert_idempotency
INSERT INTO idempotency (key, run_id, expires_at) VALUES (:key, :run_id, :expires_at)
ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, expires_at = excluded.expires_at;

-- name: insert_deadline
INSERT INTO deadlines (run_id, kind, app_id, at) VALUES (:run_id, :kind, :app_id, :at);

-- name: due_deadlines
SELECT d.run_id, d.kind, r.status, r.started_at FROM deadlines d JOIN runs r ON r.id = d.run_id
WHERE d.app_id = :app_id AND d.at <= :now;

-- name: next_deadline
SELECT MIN(at) AS due FROM deadlines WHERE app_id = :app_id;

-- name: delete_deadline
DELETE FROM deadlines WHERE run_id = :run_id AND kind = :kind;

-- name: insert_cancel_wait
INSERT INTO waits (run_id, step_id, event_name, match_path, match_key, if_expr, trigger_event,
                   expires_at, created_at, kind)
VALUES (:run_id, :step_id, :event_name, :match_path, :match_key, :if_expr, :trigger_event,
        :expires_at, :now, 'cancel')
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: cancellable_runs
SELECT id FROM runs
WHERE app_id = :app_id AND function_id = :function_id AND created_at >= :after
  AND created_at < :before AND status IN ({unfinished_runs});

-- name: insert_failure
INSERT INTO failures (run_id, step_id, attempt, error, started_at, ended_at)
VALUES (:run_id, :step_id, :attempt, :error, :started_at, :ended_at);

-- name: get_failures
SELECT step_id, attempt, error, started_at, ended_at FROM failures
WHERE run_id = :run_id ORDER BY ended_at, attempt;



-- name: child_runs
-- Runs this run started: invoked ones, and its on_failure handler.
SELECT id, app_id, function_id, event_id, status, NULL AS output, NULL AS error, attempts,
       retry, origin_run_id, parent_run_id, parent_step_id, rerun_of, created_at, started_at, ended_at
FROM runs WHERE parent_run_id = :run_id OR origin_run_id = :run_id OR rerun_of = :run_id
ORDER BY id;

-- name: event_runs
SELECT id, app_id, function_id, event_id, status, NULL AS output, NULL AS error, attempts,
       retry, origin_run_id, parent_run_id, parent_step_id, rerun_of, created_at, started_at, ended_at
FROM runs WHERE event_id = :event_id ORDER BY id;

-- name: event_field_equals
CAST(json_extract(e.data, '$.' || :data_field) AS TEXT) = :data_value

-- name: event_field_equals @postgres
-- jsonb cannot hold a NUL (U+0000), which JSON text (and so an event's data) may: before the
-- cast, each `\u0000` escape (one not itself escaped: after an even number of backslashes)
-- reads as U+FFFD, so one such event never breaks the search of every other.
jsonb_extract_path_text(CAST(CASE WHEN strpos(e.data, '\u0000') = 0 THEN e.data
                                  ELSE regexp_replace(e.data, '(?<!\\)((?:\\\\)*)\\u0000',
                                                      '\1\\ufffd', 'g') END AS jsonb),
                        VARIADIC string_to_array(:data_field, '.'))
  = :data_value

-- name: count_run_logs
SELECT COUNT(*) AS n FROM run_logs WHERE run_id = :run_id;

-- name: insert_run_log
INSERT INTO run_logs (run_id, seq, at, level, step_id, message)
VALUES (:run_id, :seq, :at, :level, :step_id, :message)
ON CONFLICT (run_id, seq) DO NOTHING;

-- name: get_run_logs
SELECT seq, at, level, step_id, message FROM run_logs WHERE run_id = :run_id ORDER BY seq;

-- name: unfinished_by_function
SELECT function_id, status, COUNT(*) AS n FROM runs WHERE status IN ({unfinished_runs})
GROUP BY function_id, status;

-- name: due_unleased
SELECT COUNT(*) AS n, MIN(available_at) AS oldest FROM queue
WHERE available_at <= :now AND (lease_expires_at IS NULL OR lease_expires_at <= :now);

-- name: set_rerun_of
UPDATE runs SET rerun_of = :rerun_of WHERE id = :run_id;

-- name: upsert_worker
INSERT INTO workers (id, app_id, host, pid, functions, slots, in_use, started_at, heartbeat_at,
                     expires_at)
VALUES (:id, :app_id, :host, :pid, :functions, :slots, :in_use, :now, :now, :expires_at)
ON CONFLICT (id) DO UPDATE SET functions = excluded.functions, slots = excluded.slots,
  in_use = excluded.in_use, heartbeat_at = excluded.heartbeat_at,
  expires_at = excluded.expires_at;

-- name: delete_worker
DELETE FROM workers WHERE id = :id;

-- name: forget_dead_workers
-- Rows of workers gone for a day (killed without saying goodbye).
DELETE FROM workers WHERE expires_at < :before;

-- name: workers
SELECT id, app_id, host, pid, functions, slots, in_use, started_at, heartbeat_at, expires_at
FROM workers ORDER BY app_id, started_at, id;

-- name: queued_by_function
-- Runs due now that no worker holds, by function: compared with what live workers serve.
SELECT app_id, function_id, COUNT(*) AS n, MIN(available_at) AS oldest FROM queue
WHERE available_at <= :now AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
GROUP BY app_id, function_id;

-- name: copy_run_events
INSERT INTO run_events (run_id, position, event_id)
SELECT :run_id, position, event_id FROM run_events WHERE run_id = :source;

-- name: run_status_in
r.status IN (SELECT value FROM json_each(:statuses))

-- name: run_status_in @postgres
r.status IN (SELECT jsonb_array_elements_text(CAST(:statuses AS jsonb)))

-- name: in_ids
-- (A fragment: the ids of the list parameter :ids, for `IN {query:in_ids}`.)
(SELECT value FROM json_each(:ids))

-- name: in_ids @postgres
(SELECT unnest(CAST(:ids AS text[])))

-- name: finished_runs_page
-- The pruner's and the stats rollup's scan: finished runs by when they ended, after the cursor (:after_at,
-- :after_id) and before :before, a page at a time (the runs_ended index, in its order).
SELECT id, app_id, function_id, status, created_at, ended_at FROM runs
WHERE ended_at IS NOT NULL AND ended_at < :before
  AND (ended_at > :after_at OR (ended_at = :after_at AND id > :after_id))
ORDER BY ended_at, id
LIMIT :limit;

-- name: idempotent_runs
-- Of the runs :ids, those an unexpired idempotency key still points at: kept while it does,
-- since the key's later events go to them.
SELECT DISTINCT run_id FROM idempotency WHERE run_id IN {query:in_ids} AND expires_at > :now;

-- name: prune_runs
-- Delete the runs :ids that are still finished and ended at or before :ended_by (one replayed
-- since the pruner read it is running again, or ended later: kept). Answers the deleted ones.
DELETE FROM runs WHERE id IN {query:in_ids}
  AND status NOT IN ({unfinished_runs}) AND ended_at <= :ended_by
RETURNING id, event_id;

-- name: batch_event_ids
SELECT DISTINCT event_id FROM run_events WHERE run_id IN {query:in_ids};

-- name: prune_steps
-- The steps of deleted runs :ids.
DELETE FROM steps WHERE run_id IN {query:in_ids};

-- name: prune_run_rows
-- wakes: if :ids
-- (a concurrency key left by a crash between a run's end and its cleanup frees a slot)
-- Everything else stored about the deleted runs :ids (a finished run has no queue row, key,
-- wait, deadline or group left; a crash between a finish and its cleanup could leave one).
DELETE FROM failures WHERE run_id IN {query:in_ids};
DELETE FROM run_logs WHERE run_id IN {query:in_ids};
DELETE FROM run_events WHERE run_id IN {query:in_ids};
DELETE FROM idempotency WHERE run_id IN {query:in_ids};
DELETE FROM queue WHERE run_id IN {query:in_ids};
DELETE FROM queue_keys WHERE run_id IN {query:in_ids};
DELETE FROM waits WHERE run_id IN {query:in_ids};
DELETE FROM deadlines WHERE run_id IN {query:in_ids};
DELETE FROM singletons WHERE run_id IN {query:in_ids};
DELETE FROM signal_waits WHERE run_id IN {query:in_ids};
DELETE FROM pending_groups WHERE run_id IN {query:in_ids};
DELETE FROM run_terms WHERE run_id IN {query:in_ids};

-- name: prune_run_rows @postgres
-- wakes: if :ids
WITH f AS (DELETE FROM failures WHERE run_id IN {query:in_ids}),
t AS (DELETE FROM run_terms WHERE run_id IN {query:in_ids}),
l AS (DELETE FROM run_logs WHERE run_id IN {query:in_ids}),
e AS (DELETE FROM run_events WHERE run_id IN {query:in_ids}),
i AS (DELETE FROM idempotency WHERE run_id IN {query:in_ids}),
q AS (DELETE FROM queue WHERE run_id IN {query:in_ids}),
k AS (DELETE FROM queue_keys WHERE run_id IN {query:in_ids}),
w AS (DELETE FROM waits WHERE run_id IN {query:in_ids}),
d AS (DELETE FROM deadlines WHERE run_id IN {query:in_ids}),
s AS (DELETE FROM singletons WHERE run_id IN {query:in_ids}),
g AS (DELETE FROM signal_waits WHERE run_id IN {query:in_ids})
DELETE FROM pending_groups WHERE run_id IN {query:in_ids};

-- name: events_page
-- The pruner's scan of events received before :before, after the cursor (:after_at,
-- :after_id), a page at a time (the events_received index, in its order).
SELECT id, received_at FROM events
WHERE received_at < :before
  AND (received_at > :after_at OR (received_at = :after_at AND id > :after_id))
ORDER BY received_at, id
LIMIT :limit;

-- name: prune_events
-- Delete the events :ids that no run holds (as the event that started it, or in its batch).
DELETE FROM events WHERE id IN {query:in_ids}
  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = events.id)
  AND NOT EXISTS (SELECT 1 FROM run_events re WHERE re.event_id = events.id);

-- name: expire_flow_state
-- Up to :limit rate-limit and throttle windows that stopped mattering.
DELETE FROM flow_state WHERE key IN (
    SELECT key FROM flow_state WHERE expires_at <= :now LIMIT :limit);

-- name: flow_state_without_expiry
-- Windows stored before they had an expiry (migration 0021), a page at a time.
SELECT key, state FROM flow_state WHERE expires_at IS NULL ORDER BY key LIMIT :limit;

-- name: set_flow_state_expiry
UPDATE flow_state SET expires_at = :expires_at WHERE key = :key;

-- name: flow_definitions
-- Definitions with a rate limit or throttle (compact JSON: each key appears only as one).
SELECT app_id, id, definition FROM functions
WHERE definition LIKE '%"rate_limit":{%' OR definition LIKE '%"throttle":{%';

-- name: expire_idempotency
-- Up to :limit idempotency keys whose window closed.
DELETE FROM idempotency WHERE key IN (
    SELECT key FROM idempotency WHERE expires_at <= :now LIMIT :limit);

-- name: prunable_run
-- (A fragment: run `r` would be pruned at cutoff :before.)
(r.ended_at IS NOT NULL AND r.ended_at < :before AND r.status NOT IN ({unfinished_runs})
 AND NOT EXISTS (SELECT 1 FROM idempotency i WHERE i.run_id = r.id AND i.expires_at > :now))

-- name: prunable_counts
-- What pruning at cutoff :before would delete: runs by status, their steps, and the events
-- received before it that no remaining run would hold.
SELECT 'run:' || r.status AS what, COUNT(*) AS n FROM runs r WHERE {query:prunable_run}
GROUP BY r.status
UNION ALL
SELECT 'steps', COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id
WHERE {query:prunable_run}
UNION ALL
SELECT 'events', COUNT(*) FROM events e WHERE e.received_at < :before
  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id AND NOT {query:prunable_run})
  AND NOT EXISTS (SELECT 1 FROM run_events re JOIN runs r ON r.id = re.run_id
                  WHERE re.event_id = e.id AND NOT {query:prunable_run});

-- name: get_setting
SELECT value FROM settings WHERE name = :name;

-- name: put_setting
INSERT INTO settings (name, value) VALUES (:name, :value)
ON CONFLICT (name) DO UPDATE SET value = excluded.value;

-- name: search_backfill_cursor
-- How far the search index's backfill got (storage/search.py); no row once it is done.
SELECT value FROM settings WHERE name = 'search_backfill_after';

-- name: search_backfill_cursor @postgres
-- Locked: servers that open at once index each batch once, one after the other.
SELECT value FROM settings WHERE name = 'search_backfill_after' FOR UPDATE;

-- name: set_search_backfill_cursor
UPDATE settings SET value = :after WHERE name = 'search_backfill_after';

-- name: end_search_backfill
DELETE FROM settings WHERE name = 'search_backfill_after';

-- name: functions_with_retention
-- Definitions with a retention of their own (compact JSON: the key appears only as one).
SELECT app_id, id, definition FROM functions WHERE definition LIKE '%"retention":%';

-- name: oldest_finished
SELECT MIN(ended_at) AS at FROM runs WHERE ended_at IS NOT NULL;

-- name: claim_retention_pass
-- One process of a deployment prunes at a time: it holds the `retention.pass` setting,
-- "<expiry, 16 digits> <owner>", until that expiry; another takes it once it expired.
-- Answers a row when :owner holds it now.
INSERT INTO settings (name, value) VALUES ('retention.pass', :claim)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
WHERE settings.value < :now_key OR substr(settings.value, 18) = :owner
RETURNING value;

-- name: release_retention_pass
DELETE FROM settings WHERE name = 'retention.pass' AND substr(value, 18) = :owner;

-- name: runs_holding_events
-- Runs started by the events :ids, or holding one in their batch.
SELECT id, app_id, function_id, status, event_id FROM runs WHERE event_id IN {query:in_ids}
UNION
SELECT r.id, r.app_id, r.function_id, r.status, r.event_id
FROM run_events re JOIN runs r ON r.id = re.run_id WHERE re.event_id IN {query:in_ids};

-- name: runs_descended
-- Runs that the runs :ids invoked, or that replay or re-run them.
SELECT id, app_id, function_id, status, event_id FROM runs WHERE parent_run_id IN {query:in_ids}
UNION
SELECT id, app_id, function_id, status, event_id FROM runs WHERE origin_run_id IN {query:in_ids}
UNION
SELECT id, app_id, function_id, status, event_id FROM runs WHERE rerun_of IN {query:in_ids};

-- name: event_ids_between
-- Event ids in (:lo, :hi): the lifecycle events of one run, whose ids start with its own.
SELECT id FROM events WHERE id > :lo AND id < :hi;

-- name: delete_flow_state
DELETE FROM flow_state WHERE key IN {query:in_ids};

-- name: get_run_stats
SELECT n, durations FROM run_stats
WHERE slot = :slot AND function_id = :function_id AND status = :status;

-- name: put_run_stats
INSERT INTO run_stats (slot, function_id, status, n, durations)
VALUES (:slot, :function_id, :status, :n, :durations)
ON CONFLICT (slot, function_id, status) DO UPDATE SET n = excluded.n,
  durations = excluded.durations;

-- name: run_stats_since
SELECT slot, function_id, status, n, durations FROM run_stats WHERE slot >= :since;

-- name: finished_after
-- Runs that ended after the rollup's cursor, newest first (by runs_ended; the caller keeps the
-- completed and failed ones: a status condition here makes SQLite read by runs_status, which
-- holds every run, and sort them).
SELECT function_id, status, created_at, ended_at FROM runs
WHERE ended_at IS NOT NULL AND ended_at <= :now
  AND (ended_at > :after_at OR (ended_at = :after_at AND id > :after_id))
ORDER BY ended_at DESC
LIMIT :limit;

-- name: prune_run_stats
DELETE FROM run_stats WHERE slot < :before;

-- name: count_unfinished_runs
SELECT status, COUNT(*) AS n FROM runs WHERE status IN ({unfinished_runs}) GROUP BY status;

-- name: change_mark
-- What the dashboard shows, as one row that differs whenever any of it changed (its live
-- updates, `server/live.py`, read it every second while pages are open): the newest event,
-- run start and run end (index lookups), the runs executing now with their stored steps
-- (as many as the workers have slots), and workers and functions (small tables; a worker
-- whose heartbeats stopped counts as gone once :now passes its expiry). No history is read,
-- so it costs the same at a million runs. Written for the indexes: newest-first lookups
-- rather than MAX (a plan PostgreSQL cached on empty tables would aggregate every row), and
-- `id IS NOT NULL` where a small table is read whole (connections disable sequential scans,
-- whose disabled cost would make PostgreSQL compile the statement with JIT on every read).
SELECT (SELECT received_at FROM events ORDER BY received_at DESC LIMIT 1) AS event_at,
       (SELECT created_at FROM runs ORDER BY created_at DESC LIMIT 1) AS created_at,
       (SELECT ended_at FROM runs WHERE ended_at IS NOT NULL ORDER BY ended_at DESC LIMIT 1)
       AS ended_at,
       r.n AS running, r.epochs AS running_epochs,
       s.n AS steps, s.final AS steps_final, s.attempts AS step_attempts,
       w.n AS workers, w.live AS live_workers, w.started AS workers_started,
       w.in_use AS slots_in_use, fn.n AS functions, fn.at AS functions_at
FROM (SELECT COUNT(*) AS n, COALESCE(SUM(lease_epoch), 0) AS epochs FROM runs
      WHERE status = {run:running}) r,
     (SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN st.status IN ({final_steps}) THEN 1 ELSE 0
      END), 0) AS final, COALESCE(SUM(st.attempts), 0) AS attempts
      FROM runs ru JOIN steps st ON st.run_id = ru.id WHERE ru.status = {run:running}) s,
     (SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN expires_at > :now THEN 1 ELSE 0 END), 0)
      AS live, MAX(started_at) AS started, COALESCE(SUM(in_use), 0) AS in_use
      FROM workers WHERE id IS NOT NULL) w,
     (SELECT COUNT(*) AS n, MAX(updated_at) AS at FROM functions WHERE id IS NOT NULL) fn;

-- name: singleton_holder
-- The unfinished run holding a singleton key, if any.
SELECT s.run_id FROM singletons s JOIN runs r ON r.id = s.run_id
WHERE s.key = :key AND r.status IN ({unfinished_runs});

-- name: hold_singleton
INSERT INTO singletons (key, run_id) VALUES (:key, :run_id)
ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id;

-- name: claim_signal
-- A run's step waits for :signal, unless another run's live wait holds it (answers no row):
-- a wait that expired, or whose run finished, or with :replace, is taken over.
INSERT INTO signal_waits (signal, run_id, step_id, expires_at)
VALUES (:signal, :run_id, :step_id, :expires_at)
ON CONFLICT (signal) DO UPDATE SET run_id = excluded.run_id, step_id = excluded.step_id,
  expires_at = excluded.expires_at
WHERE :replace = 1 OR signal_waits.expires_at <= :now
   OR (signal_waits.run_id = excluded.run_id AND signal_waits.step_id = excluded.step_id)
   OR NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = signal_waits.run_id
                  AND r.status IN ({unfinished_runs}))
RETURNING run_id;

-- name: take_signal
-- The live wait for :signal, taken: its run and step (none: no run waits for it now).
DELETE FROM signal_waits WHERE signal = :signal AND expires_at > :now
RETURNING run_id, step_id;

-- name: insert_session
INSERT INTO sessions (token_hash, actor, role, csrf, created_at, expires_at)
VALUES (:token_hash, :actor, :role, :csrf, :now, :expires_at);

-- name: find_session
SELECT actor, role, csrf, expires_at FROM sessions
WHERE token_hash = :token_hash AND expires_at > :now;

-- name: delete_session
DELETE FROM sessions WHERE token_hash = :token_hash;

-- name: delete_expired_sessions
DELETE FROM sessions WHERE expires_at <= :now;

-- name: insert_audit_entry
INSERT INTO audit_log (id, at, actor, role, action, target, status, detail)
VALUES (:id, :at, :actor, :role, :action, :target, :status, :detail);

-- name: audit_page
-- Newest first, before the (at, id) cursor: :before_at = a time past every entry for the first
-- page.
SELECT id, at, actor, role, action, target, status, detail FROM audit_log
WHERE at < :before_at OR (at = :before_at AND id < :before_id)
ORDER BY at DESC, id DESC LIMIT :limit;
