-- Placeholder of the subscriber schema (the store's own migration replaces it).
CREATE TABLE subscribers (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL,
    email_key TEXT NOT NULL UNIQUE,
    email_hash TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'unsubscribed', 'bounced')),
    source TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT '',
    unsubscribed_at TEXT
);
CREATE TABLE subscriber_lists (
    subscriber_id BIGINT NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    list TEXT NOT NULL,
    PRIMARY KEY (subscriber_id, list)
);
CREATE TABLE suppressions (
    email_hash TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE subscriber_events (
    id BIGSERIAL PRIMARY KEY,
    email_hash TEXT NOT NULL,
    event TEXT NOT NULL,
    source TEXT NOT NULL,
    at TEXT NOT NULL
);
