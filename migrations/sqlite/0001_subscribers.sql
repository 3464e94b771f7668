-- Subscribers, their lists, suppressions and the event trail (SQLite).
-- Keep column names and meanings identical to migrations/postgres: other
-- migrations (the send journal) select from these tables by name.
-- Timestamps: RFC 3339 UTC text, whole seconds ("2026-11-26T08:27:00Z").

CREATE TABLE subscribers (
    id              INTEGER PRIMARY KEY,
    -- As given (trimmed).
    email           TEXT NOT NULL,
    -- Trimmed and lower-cased: what two addresses are compared by
    -- (unique: see subscribers_email_key).
    email_key       TEXT NOT NULL,
    -- Lowercase hex SHA-256 of email_key: the identity in unsubscribe links.
    email_hash      TEXT NOT NULL,
    first_name      TEXT NOT NULL DEFAULT '',
    last_name       TEXT NOT NULL DEFAULT '',
    -- JSON object of string values, keys sorted.
    attributes      TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'unsubscribed', 'bounced')),
    -- 'import:members.csv', 'add', 'one-click', 'link', …
    source          TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    unsubscribed_at TEXT
);
-- A named unique index rather than a column constraint, so a bulk import
-- can drop it and build it again in one sort (same meaning: UNIQUE).
CREATE UNIQUE INDEX subscribers_email_key ON subscribers (email_key);
CREATE INDEX subscribers_email_hash ON subscribers (email_hash);

CREATE TABLE subscriber_lists (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    list          TEXT NOT NULL,
    PRIMARY KEY (subscriber_id, list)
) WITHOUT ROWID;
-- Walking one list's members by id.
CREATE INDEX subscriber_lists_list ON subscriber_lists (list, subscriber_id);

-- Addresses that must not be added back: removed people ('removed'),
-- unsubscribes of addresses not in the store ('unsubscribed'), and addresses
-- a server rejected that were sent to from a CSV file ('bounced').
CREATE TABLE suppressions (
    email_hash TEXT PRIMARY KEY,
    reason     TEXT NOT NULL CHECK (reason IN ('removed', 'unsubscribed', 'bounced')),
    created_at TEXT NOT NULL
) WITHOUT ROWID;

-- Every status change; no personal data but the address hash.
CREATE TABLE subscriber_events (
    id         INTEGER PRIMARY KEY,
    email_hash TEXT NOT NULL,
    event      TEXT NOT NULL CHECK (event IN ('imported', 'added', 'updated', 'unsubscribed', 'resubscribed', 'bounced', 'removed')),
    source     TEXT NOT NULL DEFAULT '',
    at         TEXT NOT NULL
);
