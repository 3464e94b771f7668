-- One time representation in the database: Unix milliseconds, as the
-- journal and the bounces keep it. The subscriber tables kept RFC 3339
-- text; each column is converted in place (add, fill, drop, rename: no
-- table is rebuilt, so the foreign keys stay as they are).
ALTER TABLE subscribers ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscribers ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscribers ADD COLUMN unsubscribed_ms INTEGER;
UPDATE subscribers SET
    created_ms = CAST(strftime('%s', created_at) AS INTEGER) * 1000,
    updated_ms = CAST(strftime('%s', updated_at) AS INTEGER) * 1000,
    unsubscribed_ms = CAST(strftime('%s', unsubscribed_at) AS INTEGER) * 1000;
ALTER TABLE subscribers DROP COLUMN created_at;
ALTER TABLE subscribers DROP COLUMN updated_at;
ALTER TABLE subscribers DROP COLUMN unsubscribed_at;
ALTER TABLE subscribers RENAME COLUMN created_ms TO created_at;
ALTER TABLE subscribers RENAME COLUMN updated_ms TO updated_at;
ALTER TABLE subscribers RENAME COLUMN unsubscribed_ms TO unsubscribed_at;

ALTER TABLE suppressions ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
UPDATE suppressions SET created_ms = CAST(strftime('%s', created_at) AS INTEGER) * 1000;
ALTER TABLE suppressions DROP COLUMN created_at;
ALTER TABLE suppressions RENAME COLUMN created_ms TO created_at;

ALTER TABLE subscriber_events ADD COLUMN at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE subscriber_events SET at_ms = CAST(strftime('%s', at) AS INTEGER) * 1000;
ALTER TABLE subscriber_events DROP COLUMN at;
ALTER TABLE subscriber_events RENAME COLUMN at_ms TO at;
