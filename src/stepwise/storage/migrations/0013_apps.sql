-- Each app that registered functions: an SDK app (its serve URL, SDK and framework, as its sync
-- said) or a Python app (registered by its workers), and when it last synced and changed.
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    url TEXT,
    sdk TEXT NOT NULL,
    framework TEXT,
    synced_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);
