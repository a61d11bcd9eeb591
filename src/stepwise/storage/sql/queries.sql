-- Every query the engine runs, by name. Parameters are :name; a block named `x @postgres`
-- replaces `x` on PostgreSQL. Read this file to reason about concurrency: the lease query and the
-- run guard are the two places where workers meet.

-- name: delete_app_triggers
DELETE FROM function_triggers WHERE app_id = :app_id;

-- name: delete_app_functions
DELETE FROM functions WHERE app_id = :app_id;

-- name: insert_function
INSERT INTO functions (app_id, id, definition, updated_at)
VALUES (:app_id, :id, :definition, :now);

-- name: insert_trigger
INSERT INTO function_triggers (event_name, app_id, function_id)
VALUES (:event_name, :app_id, :function_id)
ON CONFLICT DO NOTHING;

-- name: list_functions
SELECT app_id, id, definition, updated_at FROM functions ORDER BY app_id, id;

-- name: insert_event
INSERT INTO events (id, name, data, ts, received_at)
VALUES (:id, :name, :data, :ts, :now)
ON CONFLICT (id) DO NOTHING;

-- name: functions_for_event
SELECT app_id, function_id FROM function_triggers WHERE event_name = :name;

-- name: insert_run
INSERT INTO runs (id, app_id, function_id, event_id, status, origin_run_id, created_at)
VALUES (:id, :app_id, :function_id, :event_id, 'queued', :origin_run_id, :now);

-- name: enqueue
INSERT INTO queue (run_id, app_id, function_id, available_at, priority)
VALUES (:run_id, :app_id, :function_id, :available_at, 0);

-- name: lease
UPDATE queue SET lease_owner = :owner, lease_expires_at = :until
WHERE run_id IN (
    SELECT run_id FROM queue
    WHERE app_id = :app_id AND available_at <= :now
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
    ORDER BY priority DESC, available_at
    LIMIT :limit)
RETURNING run_id;

-- name: lease @postgres
WITH picked AS (
    SELECT run_id FROM queue
    WHERE app_id = :app_id AND available_at <= :now
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
    ORDER BY priority DESC, available_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED)
UPDATE queue SET lease_owner = :owner, lease_expires_at = :until
FROM picked WHERE queue.run_id = picked.run_id
RETURNING queue.run_id;

-- name: mark_running
UPDATE runs SET status = 'running', started_at = COALESCE(started_at, :now)
WHERE id = :run_id AND status IN ('queued', 'running');

-- name: next_due
SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL AND lease_expires_at > available_at
                THEN lease_expires_at ELSE available_at END) AS due
FROM queue WHERE app_id = :app_id;

-- name: renew_lease
UPDATE queue SET lease_expires_at = :until WHERE run_id = :run_id AND lease_owner = :owner;

-- name: run_guard
SELECT r.status, q.lease_owner FROM runs r LEFT JOIN queue q ON q.run_id = r.id
WHERE r.id = :run_id;

-- name: get_run
SELECT id, app_id, function_id, event_id, status, output, error, attempts, retry,
       origin_run_id, created_at, started_at, ended_at
FROM runs WHERE id = :run_id;

-- name: get_event
SELECT id, name, data, ts, received_at FROM events WHERE id = :id;

-- name: get_steps
SELECT id, seq, status, attempts, output, error, started_at, ended_at
FROM steps WHERE run_id = :run_id ORDER BY seq;

-- name: save_step
INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at, ended_at)
VALUES (:run_id, :id, :seq, :status, :attempts, :output, :error, :started_at, :ended_at)
ON CONFLICT (run_id, id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, ended_at = excluded.ended_at
WHERE steps.status = 'retrying';

-- name: get_step
SELECT status, output, error FROM steps WHERE run_id = :run_id AND id = :id;

-- name: set_retry
UPDATE runs SET retry = :retry WHERE id = :run_id;

-- name: requeue
UPDATE queue SET available_at = :available_at, lease_owner = NULL, lease_expires_at = NULL
WHERE run_id = :run_id;

-- name: set_run_status
UPDATE runs SET status = :status WHERE id = :run_id;

-- name: finish_run
UPDATE runs SET status = :status, output = :output, error = :error, ended_at = :now, retry = 0
WHERE id = :run_id;

-- name: dequeue
DELETE FROM queue WHERE run_id = :run_id;

-- name: replay_run
UPDATE runs SET status = 'queued', output = NULL, error = NULL, ended_at = NULL, retry = 0,
                attempts = attempts + 1
WHERE id = :run_id;

-- name: delete_failed_steps
DELETE FROM steps WHERE run_id = :run_id AND status <> 'completed';

-- name: count_runs_by_status
SELECT status, COUNT(*) AS n FROM runs GROUP BY status;
