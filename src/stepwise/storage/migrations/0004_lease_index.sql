-- Finding the next lease to expire without scanning every parked run.
CREATE INDEX queue_lease ON queue (app_id, lease_expires_at);
