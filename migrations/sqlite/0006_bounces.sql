-- Bounces and complaints learned after the relay accepted a message (DSNs,
-- ARF reports, provider webhooks). A complaint is a suppression reason and
-- an event of its own; a soft bounce is an event; every event may name the
-- campaign it came from. SQLite cannot change a CHECK in place: the two
-- small tables are copied into new ones.
CREATE TABLE suppressions_new (
    email_hash TEXT PRIMARY KEY,
    reason     TEXT NOT NULL CHECK (reason IN ('removed', 'unsubscribed', 'bounced', 'complained')),
    created_at TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO suppressions_new (email_hash, reason, created_at)
    SELECT email_hash, reason, created_at FROM suppressions;
DROP TABLE suppressions;
ALTER TABLE suppressions_new RENAME TO suppressions;

CREATE TABLE subscriber_events_new (
    id          INTEGER PRIMARY KEY,
    email_hash  TEXT NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('imported', 'added', 'updated', 'unsubscribed', 'resubscribed', 'bounced', 'removed', 'soft-bounced', 'complained')),
    source      TEXT NOT NULL DEFAULT '',
    at          TEXT NOT NULL,
    campaign_id INTEGER
);
INSERT INTO subscriber_events_new (id, email_hash, event, source, at)
    SELECT id, email_hash, event, source, at FROM subscriber_events;
DROP TABLE subscriber_events;
ALTER TABLE subscriber_events_new RENAME TO subscriber_events;

-- What each report said, per address: for `tidings bounces list`, for the
-- soft-bounce count, and so a report processed twice changes nothing
-- (report_id: the report's Message-ID, or a digest of its bytes).
-- No address, only its hash; times are Unix milliseconds, as the journal's.
CREATE TABLE bounces (
    id          INTEGER PRIMARY KEY,
    report_id   TEXT NOT NULL,
    email_hash  TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint')),
    status      TEXT NOT NULL DEFAULT '',
    diagnostic  TEXT NOT NULL DEFAULT '',
    campaign_id INTEGER,
    source      TEXT NOT NULL,
    action      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE UNIQUE INDEX bounces_report ON bounces (report_id, email_hash);
CREATE INDEX bounces_hash ON bounces (email_hash, at);
CREATE INDEX bounces_at ON bounces (at);

-- A bounce names an address: find its deliveries (the soft-bounce window,
-- the campaign of a quoted Message-ID) without reading the whole journal.
CREATE INDEX deliveries_hash ON deliveries (email_hash);
