-- Dashboard sign-in: one row per signed-in browser, found by the SHA-256 of its cookie (a copy
-- of the database holds no usable session), with the token its pages send back with every
-- change (CSRF); gone at sign-out or expiry.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
-- The audit log: every management action and sign-in (who, as what role, did what to what,
-- when, and how it was answered), read newest first.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at, id);
